// Opens the viewer page with many cameras in headless Chromium and measures what a person
// would see: the protocol the page came over, whether each tile streams its camera live or
// refreshes snapshots, and how many different pictures each tile showed while the page was
// watched (each tile drawn into a small canvas every 50 ms and its pixels hashed). Also
// counts the page's snapshot requests. Prints a JSON summary; saves a screenshot.
//
// usage: node live.cjs URL CAMERAS SECONDS SCREENSHOT TIMEOUT_MS
// env:   PLAYWRIGHT_CORE (path of the playwright-core package), CHROMIUM (browser binary)
'use strict';

const { launch, log } = require('./launch.cjs');

const [url, camerasArg, secondsArg, screenshot, timeoutArg] = process.argv.slice(2);
const cameras = Number(camerasArg);
const seconds = Number(secondsArg);
const timeout = Number(timeoutArg) || 60000;

(async () => {
  const browser = await launch();
  // The test's certificate is its own: trusted here as a person would after checking it.
  const context = await browser.newContext({
    ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 },
  });
  const page = await context.newPage();
  page.setDefaultTimeout(timeout);
  page.on('console', (m) => log('console.' + m.type() + ':', m.text()));
  page.on('pageerror', (e) => log('page error:', e.message));
  let snapshots = 0;
  let streams = 0;
  page.on('request', (r) => {
    if (r.url().includes('/snapshot.jpg')) snapshots += 1;
    if (r.url().includes('/stream.mjpeg')) streams += 1;
  });
  const result = { url };
  try {
    await page.goto(url);
    // Every camera's tile, each showing a picture.
    await page.waitForFunction((n) => {
      const imgs = [...document.querySelectorAll('#grid .tile img')];
      return imgs.length >= n && imgs.every((i) => i.naturalWidth > 0);
    }, cameras);
    const before = snapshots;
    result.watch = await page.evaluate(async (ms) => {
      const canvas = document.createElement('canvas');
      canvas.width = 32;
      canvas.height = 24;
      const ctx = canvas.getContext('2d', { willReadFrequently: true });
      const tiles = [...document.querySelectorAll('#grid .tile')];
      const seen = tiles.map(() => new Set());
      const started = performance.now();
      let samples = 0;
      while (performance.now() - started < ms) {
        tiles.forEach((t, i) => {
          const img = t.querySelector('img');
          if (!img.naturalWidth) return;
          ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
          const d = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
          let h = 0;
          for (let k = 0; k < d.length; k += 4) h = (Math.imul(h, 31) + d[k] + d[k + 1] * 7 + d[k + 2] * 13) >>> 0;
          seen[i].add(h);
        });
        samples += 1;
        await new Promise((r) => setTimeout(r, 50));
      }
      return {
        protocol: document.body.dataset.protocol,
        seconds: (performance.now() - started) / 1000,
        samples,
        tiles: tiles.map((t, i) => ({
          camera: t.dataset.camera, view: t.dataset.view, pictures: seen[i].size,
        })),
      };
    }, seconds * 1000);
    result.snapshot_requests = snapshots - before;
    result.stream_requests = streams;
    await page.screenshot({ path: screenshot });
    console.log(JSON.stringify(result));
  } catch (e) {
    log('failed:', e.message, JSON.stringify(result));
    await page.screenshot({ path: screenshot.replace(/\.png$/, '-failure.png') }).catch(() => {});
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
})();
