// What the browser checks share: headless Chromium started as the tests need it, and a log
// on standard error (standard output carries the result).
'use strict';

const { chromium } = require(process.env.PLAYWRIGHT_CORE);

function log(...args) {
  console.error('[browser]', ...args);
}

// Debian's Chromium (CHROMIUM), headless, without anything that would reach the network.
function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM,
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
}

module.exports = { launch, log };
