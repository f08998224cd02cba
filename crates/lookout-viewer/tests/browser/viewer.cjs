// Opens the viewer page in headless Chromium and checks what a person would see: a tile per
// camera, a live image that changes, the expected label, a detector's box with its label over
// the image, the changes feed. Saves screenshots.
//
// usage: node viewer.cjs URL CAMERA LABEL OBJECT STEADY SCREENSHOT_DIR TIMEOUT_MS
// (STEADY: a camera that always shows the photo LABEL names, for the screenshot's timing)
// env:   PLAYWRIGHT_CORE (path of the playwright-core package), CHROMIUM (browser binary),
//        VIEWER_TOKEN (the viewer's --auth-token: checks that the page asks for it, then
//        answers the browser's sign-in with it)
'use strict';

const path = require('path');
const { launch, log } = require('./launch.cjs');

const [url, camera, label, object, steady, outDir, timeoutArg] = process.argv.slice(2);
const timeout = Number(timeoutArg) || 60000;

(async () => {
  const browser = await launch();
  const result = {};
  const token = process.env.VIEWER_TOKEN;
  if (token) {
    // Without the token the page is refused with a Basic challenge: the browser's sign-in
    // (headless Chromium has no dialog to show, so this asks with the browser's HTTP client).
    const anonymous = await browser.newContext();
    const refused = await anonymous.request.get(url);
    result.without_token = { status: refused.status(), challenge: refused.headers()['www-authenticate'] };
    await anonymous.close();
  }
  const page = await browser.newPage({
    viewport: { width: 1280, height: 820 },
    // What a person types into the sign-in dialog: any user name, the token as password;
    // given only when the viewer challenges, as a person would.
    httpCredentials: token ? { username: 'viewer', password: token } : undefined,
  });
  page.setDefaultTimeout(timeout);
  page.on('console', (m) => log('console.' + m.type() + ':', m.text()));
  page.on('pageerror', (e) => log('page error:', e.message));
  try {
    await page.goto(url);
    const tile = `article.tile[data-camera="${camera}"]`;
    await page.waitForSelector(`${tile} img`);

    // The image changes: two captures of the <img> through a canvas differ. The page and the
    // stream share an origin, so the canvas is readable.
    const signatureOf = (selector) => page.evaluate((sel) => {
      const img = document.querySelector(sel);
      if (!img || !img.complete || !img.naturalWidth) return null;
      const c = document.createElement('canvas');
      c.width = 32;
      c.height = 24;
      const g = c.getContext('2d');
      g.drawImage(img, 0, 0, c.width, c.height);
      const d = g.getImageData(0, 0, c.width, c.height).data;
      let h = 0;
      for (let i = 0; i < d.length; i += 1) h = (Math.imul(h, 31) + d[i]) | 0;
      return h;
    }, selector);
    const signature = () => signatureOf(`${tile} img`);
    const deadline = Date.now() + timeout;
    let first = null;
    let changed = null;
    while (Date.now() < deadline) {
      const s = await signature();
      if (s !== null && first === null) first = s;
      else if (s !== null && s !== first) { changed = s; break; }
      await page.waitForTimeout(100);
    }
    if (changed === null) throw new Error(`the image of ${camera} never changed (first capture: ${first})`);
    result.image_signatures = [first, changed];

    // Frame events move the tile's sequence forward.
    const seq = () => page.$eval(tile, (t) => Number(t.dataset.sequence || -1));
    const s1 = await seq();
    await page.waitForFunction(([sel, s]) => Number(document.querySelector(sel).dataset.sequence || -1) > s, [tile, s1]);
    result.sequences = [s1, await seq()];

    // The label appears (read where it was seen: the slideshow moves on).
    const seen = await page.waitForFunction(([sel, want]) => {
      const l = document.querySelector(sel + ' .label');
      const score = document.querySelector(sel + ' .score');
      return l && l.textContent.includes(want) && { label: l.textContent, score: score.textContent };
    }, [tile, label]);
    Object.assign(result, await seen.jsonValue());

    // A detector's box with the object's label appears over the image, where the image is.
    // Measured in the same step that finds it: the slideshow moves on and the box goes.
    const box = `${tile} .boxes .box[data-label="${object}"]`;
    const found = await page.waitForFunction((sel) => {
      const b = document.querySelector(sel);
      if (!b) return false;
      const r = b.getBoundingClientRect();
      const img = b.closest('.video').querySelector('img').getBoundingClientRect();
      const inside = r.left >= img.left - 1 && r.top >= img.top - 1 &&
        r.right <= img.right + 1 && r.bottom <= img.bottom + 1;
      return { label: b.dataset.label, tag: b.querySelector('.tag').textContent,
               colour: getComputedStyle(b).borderTopColor, visible: getComputedStyle(b).display !== 'none',
               width: r.width, height: r.height, image_width: img.width, image_height: img.height, inside };
    }, box);
    result.object = await found.jsonValue();
    if (!result.object.visible || !result.object.inside) throw new Error(`the ${object} box is not shown over the image: ${JSON.stringify(result.object)}`);

    // fps and latency are shown, and the changes feed has entries.
    await page.waitForFunction((sel) => /\d/.test(document.querySelector(sel + ' .latency').textContent), tile);
    await page.waitForSelector('#changes li');
    result.fps = await page.$eval(`${tile} .fps`, (e) => e.textContent);
    result.latency = await page.$eval(`${tile} .latency`, (e) => e.textContent);
    result.changes = await page.$$eval('#changes li', (li) => li.map((e) => e.textContent));
    result.tiles = await page.$$eval('article.tile', (t) => t.map((e) => e.dataset.camera));

    // Screenshots, laptop then phone, just after the label turned to the expected one again
    // (labels follow frames, so right then the image matches the label).
    const labelIs = (want, yes) => page.waitForFunction(([sel, w, y]) =>
      document.querySelector(sel + ' .label').textContent.includes(w) === y, [tile, want, yes]);
    await labelIs(label, false).catch(() => log('the label never changed away from', label));
    await labelIs(label, true);
    // The boxes of the photo the label names, over that photo: the image is the steady
    // camera's (the same JPEG). Label and boxes follow the image through the predictors and a
    // loaded machine shows the stream late, so this waits for them to agree.
    const agreed = async () => {
      const right = await page.evaluate(([sel, want, other]) => {
        const t = document.querySelector(sel);
        const boxes = [...t.querySelectorAll('.boxes .box')];
        return t.querySelector('.label').textContent.includes(want) && boxes.length > 0 &&
          boxes.every((b) => b.dataset.label !== other);
      }, [tile, label, object]);
      const shown = right && (await signature());
      return shown !== null && shown !== false &&
        shown === (await signatureOf(`article.tile[data-camera="${steady}"] img`));
    };
    const until = Date.now() + timeout / 2;
    while (!(await agreed()) && Date.now() < until) await page.waitForTimeout(100);
    await page.waitForTimeout(400); // the score bar's transition
    await page.screenshot({ path: path.join(outDir, 'viewer.png') });
    result.at_screenshot = await page.$eval(tile, (t) => ({ frame: t.dataset.sequence, label: t.dataset.labelSequence }));
    await page.setViewportSize({ width: 390, height: 844 });
    await labelIs(label, false).catch(() => {});
    await labelIs(label, true);
    await page.waitForTimeout(200);
    await page.screenshot({ path: path.join(outDir, 'viewer-phone.png'), fullPage: true });

    // The overlay mode: the label burned into the frames by the viewer.
    await page.setViewportSize({ width: 1280, height: 820 });
    await page.goto(url + '?overlay=1');
    await page.waitForFunction((sel) => {
      const img = document.querySelector(sel + ' img');
      return img && img.src.includes('overlay=1') && img.complete && img.naturalWidth > 0;
    }, tile);
    await labelIs(label, false).catch(() => {});
    await labelIs(label, true);
    await page.waitForTimeout(600);
    await page.screenshot({ path: path.join(outDir, 'viewer-overlay.png') });
    console.log(JSON.stringify(result));
  } catch (e) {
    log('FAILED:', e.message);
    log('partial result:', JSON.stringify(result));
    await page.screenshot({ path: path.join(outDir, 'viewer-failure.png') }).catch(() => {});
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
})().catch((e) => {
  log('FAILED:', e.stack || e.message);
  process.exit(1);
});
