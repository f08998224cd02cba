// Opens the viewer page in headless Chromium, picks a camera's history and checks what a
// person would see: its changes with thumbnails, newest first, older ones appearing as the
// list is scrolled down to the camera's first change. Prints a JSON summary; saves a
// screenshot.
//
// usage: node history.cjs URL CAMERA SCREENSHOT_DIR TIMEOUT_MS
// env:   PLAYWRIGHT_CORE (path of the playwright-core package), CHROMIUM (browser binary)
'use strict';

const path = require('path');
const { launch, log } = require('./launch.cjs');

const [url, camera, outDir, timeoutArg] = process.argv.slice(2);
const timeout = Number(timeoutArg) || 60000;

(async () => {
  const browser = await launch();
  const page = await browser.newPage({ viewport: { width: 1280, height: 820 } });
  page.setDefaultTimeout(timeout);
  page.on('console', (m) => log('console.' + m.type() + ':', m.text()));
  page.on('pageerror', (e) => log('page error:', e.message));
  const result = {};
  try {
    await page.goto(url);
    // The camera is offered once the page knows it (from the changes it loaded).
    await page.waitForSelector(`#history-camera option[value="${camera}"]`, { state: 'attached' });
    await page.selectOption('#history-camera', camera);
    const items = `#changes li[data-camera="${camera}"]`;
    await page.waitForFunction((sel) => document.querySelectorAll(sel).length >= 10, items);
    result.first_page = await page.$$eval(items, (l) => l.length);

    // Scroll to the end of the list while it says older changes exist; each scroll must
    // bring more of them.
    const count = () => page.$$eval(items, (l) => l.length);
    while (await page.$eval('#history-more', (m) => !m.hidden)) {
      const before = await count();
      await page.$eval('.feed', (f) => { f.scrollTop = f.scrollHeight; });
      await page.waitForFunction(([sel, n]) => document.querySelectorAll(sel).length > n
        || document.getElementById('history-more').hidden, [items, before]);
    }
    result.after_scroll = await page.$$eval(items, (l) => l.length);
    // Every thumbnail loads (they are lazy: bring each into view).
    await page.$$eval(`${items} img.thumb`, (imgs) => imgs.forEach((i) => { i.loading = 'eager'; }));
    await page.waitForFunction((sel) => [...document.querySelectorAll(sel)]
      .every((i) => i.complete && i.naturalWidth > 0), `${items} img.thumb`);
    result.loaded_thumbnails = await page.$$eval(`${items} img.thumb`,
      (imgs) => imgs.filter((i) => i.complete && i.naturalWidth > 0).length);
    result.thumbnail_width = await page.$eval(`${items} img.thumb`, (i) => i.naturalWidth);
    result.newest = await page.$eval(`${items} .new`, (e) => e.textContent);
    result.oldest = await page.$$eval(`${items} .new`, (l) => l[l.length - 1].textContent);
    await page.$eval('.feed', (f) => { f.scrollTop = 0; });
    await page.screenshot({ path: path.join(outDir, 'viewer-history.png') });
    console.log(JSON.stringify(result));
  } catch (e) {
    log('failed:', e.message, JSON.stringify(result));
    await page.screenshot({ path: path.join(outDir, 'viewer-history-failure.png') }).catch(() => {});
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
})();
