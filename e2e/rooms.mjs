// Browser test of examples/rooms, run by examples/rooms/browser_test.go.
// Two pages (A and B) watch the room "demo"; the Go test streams frames
// into it and records each frame's checksum. The script asserts what the
// pages show: the instance, the frame counter growing, the canvas changing,
// and the last frame's checksum being one the streamer sent for that frame
// number (the "check" control action). With args.redis it also stops and
// starts Redis (the pages show the outage, then frames flow again) and kills
// A's instance (A reconnects through the proxy to args.failover and its
// canvas keeps updating).
import { run, args, step, control } from "./lib.mjs";

const a = args();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** What the page shows, and a hash of the canvas's pixels. */
function snapshot(page) {
  return page.evaluate(() => {
    const t = (id) => document.getElementById(id).textContent;
    const c = /** @type {HTMLCanvasElement} */ (document.getElementById("screen"));
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let h = 0x811c9dc5;
    for (let i = 0; i < d.length; i++) { h ^= d[i]; h = Math.imul(h, 0x01000193); }
    return {
      frames: Number(t("frames")), missed: Number(t("missed")), seq: t("seq"), sum: t("sum"),
      node: t("node"), state: t("state"), backplane: t("backplane"), live: t("live"), canvas: h >>> 0,
    };
  });
}

/** Polls the page until pred holds, or fails saying what the page shows. */
async function until(name, page, what, pred, timeout = 10000) {
  const end = Date.now() + timeout;
  let s;
  for (;;) {
    s = await snapshot(page);
    if (pred(s)) return s;
    if (Date.now() > end) throw new Error(`${name}: ${what}: not within ${timeout} ms; the page shows ${JSON.stringify(s)}`);
    await sleep(100);
  }
}

/**
 * Asserts that frames flow on the page: ten more arrive, the canvas
 * changes, and the last frame is byte for byte the one sent (checksum).
 */
async function flowing(name, page, why) {
  const s0 = await snapshot(page);
  const s1 = await until(name, page, `10 more frames and a changed canvas ${why}`,
    (s) => s.frames >= s0.frames + 10 && s.canvas !== s0.canvas && s.live === "live");
  await control("check", { seq: s1.seq, sum: s1.sum });
  step(`${name} ${why}: ${s1.frames} frames on ${s1.node}, last #${s1.seq} checksum ${s1.sum} as sent, canvas changed, ${s1.missed} missed`);
  return s1;
}

run(async (browser) => {
  const pages = {};
  for (const [name, base, node] of [["A", a.a, a.nodeA], ["B", a.b, a.nodeB]]) {
    // A context each: two viewers, as two people would be.
    const page = await (await browser.newContext()).newPage();
    page.on("pageerror", (err) => console.log(`${name} page error: ${err}`));
    await page.goto(`${base}/?name=${name}&room=demo`);
    await until(name, page, `open on ${node}`, (s) => s.state === "open" && s.node === node);
    pages[name] = page;
  }
  step(`A on ${a.nodeA}, B on ${a.nodeB}`);
  for (const name of ["A", "B"]) await flowing(name, pages[name], "at first");
  if (!a.redis) return;

  step("stop redis");
  await control("redis-stop");
  for (const name of ["A", "B"]) {
    const s = await until(name, pages[name], "the outage shown", (s) => s.backplane.startsWith("down") && s.live.startsWith("no frame"));
    step(`${name} shows backplane "${s.backplane}", stream "${s.live}"`);
  }
  step("start redis");
  await control("redis-start");
  for (const name of ["A", "B"]) {
    const s = await until(name, pages[name], "the backplane restored", (s) => s.backplane.startsWith("restored"), 15000);
    step(`${name} shows backplane "${s.backplane}"`);
    await flowing(name, pages[name], "after the Redis restart");
  }

  step(`kill ${a.nodeA}`);
  await control("kill");
  const s = await until("A", pages.A, `reconnected to ${a.failover}`, (s) => s.node === a.failover && s.state === "open", 15000);
  step(`A reconnected to ${s.node}`);
  for (const name of ["A", "B"]) await flowing(name, pages[name], `after ${a.nodeA} was killed`);
}, a.redis ? 55000 : 35000);
