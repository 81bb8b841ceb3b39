// Shared helpers of the browser tests: launch Debian's Chromium headless
// through playwright-core (never a downloaded browser), report results, and
// fail loudly. Each test script is run by a Go test (internal/browsertest)
// as `node e2e/<script>.mjs <json args>` and must exit 0 on success.
import { chromium } from "playwright-core";

/** @returns {Promise<import("playwright-core").Browser>} */
export async function launch() {
  return chromium.launch({
    executablePath: process.env.WSHUB_CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/** The JSON argument the Go test passed. */
export function args() {
  return JSON.parse(process.argv[2] || "{}");
}

/** Logs a step, for the Go test's output. */
export function step(msg) {
  console.log(`step: ${msg}`);
}

/**
 * Sends a request to the Go test's control endpoint (args().control), which
 * does what a page cannot (kill a node, restart Redis) and answers when done.
 * @param {string} action
 * @param {Record<string,string>} [params]
 */
export async function control(action, params = {}) {
  const a = args();
  const q = new URLSearchParams({ action, ...params });
  const res = await fetch(`${a.control}?${q}`);
  const body = await res.text();
  if (!res.ok) throw new Error(`control ${action}: ${res.status} ${body}`);
  return body;
}

/**
 * Runs main with a launched browser, closes it, and exits 0, or 1 with the
 * error, within timeoutMs.
 * @param {(browser: import("playwright-core").Browser) => Promise<void>} main
 * @param {number} [timeoutMs]
 */
export async function run(main, timeoutMs = 120000) {
  const timer = setTimeout(() => {
    console.error(`timeout after ${timeoutMs} ms`);
    process.exit(2);
  }, timeoutMs);
  let browser;
  try {
    browser = await launch();
    await main(browser);
    console.log("ok");
    await browser.close();
    clearTimeout(timer);
    process.exit(0);
  } catch (err) {
    console.error(err && err.stack ? err.stack : String(err));
    if (browser) await browser.close().catch(() => {});
    process.exit(1);
  }
}
