// Smoke test of the harness: a page served by the Go test renders, and its
// script runs.
import { run, args, step } from "./lib.mjs";

run(async (browser) => {
  const page = await browser.newPage();
  step(`open ${args().url}`);
  await page.goto(args().url);
  await page.waitForSelector("text=hello from wshub");
});
