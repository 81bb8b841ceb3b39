// Browser test of examples/notify, run by examples/notify/browser_test.go.
//
// args: {mode: "memory" | "redis", device, admin, control, shots}: the base
// URL the device page is opened at (instance 1, or on Redis a failover
// proxy in front of n1 then n2), the admin page's instance (n2), the
// control URL (redis: kill-n1, redis-kill, redis-restart) and a directory
// outside the repository for screenshots of a failure.
//
// memory: the device on n1 gets what the admin page on n2 sends; the admin
// page shows the device online, "delivered to 1 session", then, with the
// device gone, "device offline".
//
// redis (Streams): the same, then a stream of notifications POSTed to n2
// while n1, the device's node, is killed: the page shows the connection
// lost, reconnects through the proxy to n2, and has every notification
// once, in order, those sent while it was away marked so. Then Redis is
// killed and restarted: the page shows the outage, the admin page "not
// sent", and afterwards notifications flow again.
import { run, args, step, control } from "./lib.mjs";

const a = args();
const T = 15000; // bound of each wait

/** @param {import("playwright-core").Page} page */
async function text(page, sel) {
  return (await page.textContent(sel)) ?? "";
}

function assert(cond, msg) {
  if (!cond) throw new Error(`assertion failed: ${msg}`);
}

/** Waits until the element's text contains want (and its data-state is state, if given). */
async function waitText(page, sel, want, state) {
  await page.waitForFunction(
    ([sel, want, state]) => {
      const el = document.querySelector(sel);
      return el && el.textContent.includes(want) && (state === undefined || el.dataset.state === state);
    },
    [sel, want, state],
    { timeout: T },
  ).catch(async (err) => {
    const el = await page.$(sel);
    const got = el ? `${await el.getAttribute("data-state")}: ${await el.textContent()}` : "missing";
    throw new Error(`${sel}: want "${want}"${state ? ` (${state})` : ""}, got "${got}"\n${err.message}`);
  });
}

/** The notifications the device page shows, oldest first. */
async function received(page) {
  return page.$$eval("#list li", (lis) => lis.reverse().map((li) => ({
    text: li.querySelector(".text").textContent,
    meta: li.querySelector("small").textContent,
    duplicate: li.dataset.duplicate === "1",
  })));
}

/** Sends from the admin page's form, waits for the result line and returns it. */
async function send(admin, msg, want, state) {
  await admin.fill("#text", msg);
  await admin.evaluate(() => { document.getElementById("result").textContent = "sending…"; });
  await admin.click("#send");
  await admin.waitForFunction(() => document.getElementById("result").textContent !== "sending…", null, { timeout: T });
  if (want !== undefined) await waitText(admin, "#result", want, state);
  return text(admin, "#result");
}

/** POSTs a notification to the admin's instance, as a shop's backend would. */
async function post(to, msg) {
  const res = await fetch(`${a.admin}/notify`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ to, text: msg }),
  });
  const body = await res.json();
  if (!res.ok) throw new Error(`POST /notify ${msg}: ${res.status} ${JSON.stringify(body)}`);
  return body;
}

run(async (browser) => {
  const ctx = await browser.newContext({ viewport: { width: 390, height: 800 } }); // a phone's width
  const pages = [];
  try {
    step(`device page on ${a.device}`);
    const device = await ctx.newPage();
    pages.push(device);
    device.on("console", (m) => console.log(`device console: ${m.text()}`));
    await device.goto(`${a.device}/?device=phone-1`);
    await waitText(device, "#conn", "online", "open");
    await waitText(device, "#backplane", "connected to instance n1", "up");

    step(`admin page on ${a.admin}`);
    const admin = await ctx.newPage();
    pages.push(admin);
    await admin.goto(`${a.admin}/admin`);
    await waitText(admin, "#node", "n2");
    await waitText(admin, "#online", "phone-1 is online: 1 session", "online");

    step("send from instance 2 to the device on instance 1");
    await send(admin, "Order #1001 was placed", "delivered to 1 session (n2-1, sent by instance n2)", "delivered");
    await waitText(device, "#list li:first-child .text", "Order #1001 was placed");
    await waitText(device, "#list li:first-child small", "sent by instance n2");
    await waitText(device, "#count", "1");

    if (a.mode === "memory") {
      step("the device goes away: offline");
      await device.close();
      await waitText(admin, "#online", "phone-1 is offline", "offline");
      await send(admin, "Order #1002 was placed", "device offline: n2-2 is kept", "offline");
      return;
    }

    step("a stream of notifications to n2 while n1, the device's node, is killed");
    const want = ["Order #1001 was placed"];
    let killed = false;
    const sender = (async () => {
      for (let i = 1; i <= 24; i++) {
        const msg = `stream ${i}`;
        await post("phone-1", msg);
        want.push(msg);
        if (i === 8) {
          await control("kill-n1");
          killed = true;
        }
        await new Promise((r) => setTimeout(r, 40));
      }
    })();
    await waitUntil(() => killed, sender);
    await waitText(device, "#conn", "offline: the connection was lost", "closed");
    await waitText(device, "#conn", "online", "open");
    await waitText(device, "#backplane", "connected to instance n2", "up");
    await sender;
    await waitText(device, "#count", String(want.length));
    const got = await received(device);
    assert(JSON.stringify(got.map((n) => n.text)) === JSON.stringify(want),
      `every notification once, in order:\n got ${JSON.stringify(got.map((n) => n.text))}\nwant ${JSON.stringify(want)}`);
    assert(!got.some((n) => n.duplicate), "no duplicate");
    const away = got.filter((n) => n.meta.includes("sent while away"));
    step(`caught up on reconnect: ${away.map((n) => n.text).join(", ")}`);
    assert(away.length >= 1, "some notifications were sent while the device was away");
    assert(!got.slice(0, 9).some((n) => n.meta.includes("sent while away")), "none before the kill is marked");
    await waitText(admin, "#online", "phone-1 is online: 1 session", "online");

    step("Redis is killed: the outage shows");
    await control("redis-kill");
    await waitText(device, "#backplane", "cut off from the others", "down");
    await waitText(device, "#conn", "online", "open"); // the socket itself stays
    await send(admin, "Order #1002 was placed", "not sent: the backplane is unavailable", "error");

    step("Redis is back: notifications flow again");
    await control("redis-restart");
    await waitText(device, "#backplane", "connected to instance n2", "up");
    // Presence is written again within a refresh after the restart; until
    // then the device may read as offline, though the send reaches it.
    const deadline = Date.now() + T;
    for (let i = 3; ; i++) {
      const line = await send(admin, `Order #100${i} was placed`);
      if (line.startsWith("delivered to 1 session")) {
        await waitText(device, "#list li:first-child .text", `Order #100${i} was placed`);
        break;
      }
      assert(Date.now() < deadline, `no delivery after the restart: ${line}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    step(`device notice: ${await text(device, "#notice")}`);
  } catch (err) {
    for (const [i, p] of pages.entries()) {
      if (!p.isClosed() && a.shots) {
        const file = `${a.shots}/notify-${a.mode}-${i}.png`;
        await p.screenshot({ path: file }).catch(() => {});
        console.error(`screenshot: ${file}`);
      }
    }
    throw err;
  }
}, a.mode === "memory" ? 30000 : 60000);

/** Waits until cond holds, failing early if the sender failed. */
async function waitUntil(cond, sender) {
  let failed;
  sender.catch((err) => { failed = err; });
  const deadline = Date.now() + T;
  while (!cond()) {
    if (failed) throw failed;
    if (Date.now() > deadline) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 10));
  }
}
