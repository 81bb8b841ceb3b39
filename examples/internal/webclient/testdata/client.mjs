// Browser test of wshub.js, run by examples/internal/webclient's
// TestBrowserClient (with the e2e harness: see e2e/lib.mjs).
import { run, args, step, control } from "../../../../e2e/lib.mjs";

const a = args();
const T = 10000;

function check(ok, msg) {
  if (!ok) throw new Error(msg);
}

run(async (browser) => {
  const page = await browser.newPage();
  page.on("pageerror", (e) => console.error(`page error: ${e.message}`));
  await page.goto(a.url);
  await page.waitForFunction(() => window.ready, null, { timeout: T });
  const events = () => page.evaluate(() => window.events);
  const waitFor = (fn, what) => page.waitForFunction(fn, null, { timeout: T, polling: 20 })
    .catch(async () => { throw new Error(`${what}; events: ${JSON.stringify(await events())}`); });
  const messages = async () => (await events()).filter((e) => e.kind === "message").map((e) => e.data);
  const opens = `window.events.filter((e) => e.kind === "state" && e.state === "open").length`;

  step("connect and receive, with positions");
  await page.evaluate(() => window.start("u1"));
  await waitFor(`${opens} === 1`, "open");
  await control("send", { user: "u1", text: "a1" });
  await control("send", { user: "u1", text: "a2" });
  await waitFor(`window.events.filter((e) => e.kind === "message").length === 2`, "two messages");
  const first = (await events()).find((e) => e.kind === "message");
  check(first.data === "a1" && first.channel === "u:u1" && /^[0-9a-f]+:[0-9a-f]+$/.test(first.offset) && !first.binary,
    `a message with its channel and offset: ${JSON.stringify(first)}`);

  step("closed with 1013: back off, reconnect, resume");
  await control("disconnect", { user: "u1", code: "1013", reason: "busy" });
  await control("send", { user: "u1", text: "a3" });
  await waitFor(`${opens} === 2`, "reopened");
  await waitFor(`window.events.some((e) => e.data === "a3")`, "a3 after the reconnect");
  let closed = (await events()).filter((e) => e.state === "closed");
  check(closed.length === 1 && closed[0].code === 1013 && closed[0].reason === "busy" &&
    closed[0].delay >= 250 && closed[0].delay <= 500 && closed[0].attempt === 1,
    `1013: a backoff between minDelay and 2×minDelay: ${JSON.stringify(closed)}`);

  step("closed with 1012: at once; a log lost: not-recovered");
  await control("drop-log", { user: "u1" });
  await control("disconnect", { user: "u1", code: "1012", reason: "restart" });
  await waitFor(`${opens} === 3`, "reopened after 1012");
  await waitFor(`window.events.some((e) => e.kind === "not-recovered")`, "not-recovered");
  closed = (await events()).filter((e) => e.state === "closed");
  check(closed[1].code === 1012 && closed[1].delay < 250, `1012: within minDelay: ${JSON.stringify(closed[1])}`);
  const nr = (await events()).find((e) => e.kind === "not-recovered");
  check(nr.channel === "u:u1", `not-recovered names the channel: ${JSON.stringify(nr)}`);
  await control("send", { user: "u1", text: "a4" });
  await waitFor(`window.events.some((e) => e.data === "a4")`, "a4");
  const got = await messages();
  check(JSON.stringify(got) === JSON.stringify(["a1", "a2", "a3", "a4"]), `each message once: ${got}`);

  step("close(): closed for good, send refused");
  await page.evaluate(() => window.conn.close());
  await waitFor(`window.conn.state === "closed"`, "closed");
  check(await page.evaluate(() => window.conn.send("x") === false), "send after close returns false");
  closed = (await events()).filter((e) => e.state === "closed");
  check(closed.at(-1).delay === null, `no reconnect after close(): ${JSON.stringify(closed.at(-1))}`);

  step("batched framing, text and binary");
  await page.evaluate(() => { window.events = []; window.start("u2", { batch: true }); });
  await waitFor(`${opens} === 1`, "u2 open");
  await control("send", { user: "u2", text: "t1" });
  await control("send", { user: "u2", text: "\x01\x02\x03", binary: "1" });
  await control("send", { user: "u2", text: "t2" });
  await waitFor(`window.events.filter((e) => e.kind === "message").length === 3`, "three messages");
  const m = (await events()).filter((e) => e.kind === "message");
  check(m[0].data === "t1" && !m[0].binary && m[1].data === "bytes:1,2,3" && m[1].binary && m[2].data === "t2" &&
    m.every((e) => e.channel === "u:u2"), `batched records split: ${JSON.stringify(m)}`);

  step("a 4xxx close: no reconnect");
  await control("disconnect", { user: "u2", code: "4001", reason: "go away" });
  await waitFor(`window.conn.state === "closed"`, "closed by policy");
  await page.waitForTimeout(700); // longer than any backoff it could have picked
  const after = (await events()).filter((e) => e.kind === "state");
  check(after.at(-1).state === "closed" && after.at(-1).code === 4001 && after.at(-1).delay === null &&
    after.filter((e) => e.state === "connecting").length === 1, `4001 ends it: ${JSON.stringify(after)}`);
}, 30000);
