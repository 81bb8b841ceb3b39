// Browser test of examples/chat, run by examples/chat/browser_test.go.
//
// mode "memory": one chat process, two tabs: pick names, join a room,
// exchange room messages and a direct message, watch the member list, send
// a direct message to an offline user; a phone-width tab; a name per tab.
//
// mode "redis": two chat nodes on one Redis in Streams mode behind a
// balancer (args.url), one tab on each: a Redis restart (the pages show the
// outage and the restore, and messages flow again), then the node of one
// tab killed mid-stream (it reconnects to the other node and gets every
// message sent meanwhile, once).
import { run, args, step as logStep, control } from "./lib.mjs";

const a = args();
const t0 = Date.now();
const step = (msg) => logStep(`${msg} (+${Date.now() - t0} ms)`);
const T = 15000; // bound of every wait

/** Opens a tab and enters the chat as name. */
async function login(ctx, name, viewport) {
  const page = await ctx.newPage();
  if (viewport) await page.setViewportSize(viewport);
  page.on("pageerror", (e) => console.error(`${name}: page error: ${e.message}`));
  await page.goto(a.url);
  await page.fill("#name", name);
  await page.click("#login button");
  await online(page);
  // Record every state the page shows, with the time, for the assertions.
  await page.evaluate(() => {
    const el = document.getElementById("state");
    window.states = [{ t: Date.now(), text: el.textContent }];
    new MutationObserver(() => window.states.push({ t: Date.now(), text: el.textContent }))
      .observe(el, { childList: true, characterData: true, subtree: true });
  });
  return page;
}

const online = (page) => page.waitForFunction(() => /^online \(node /.test(document.getElementById("state").textContent), null, { timeout: T, polling: 20 });
const nodeOf = async (page) => (await page.textContent("#state")).match(/node (\S+)\)/)[1];

/** Types text into the message box and sends it. */
async function say(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

/** The log's lines: {cls, who, text}. */
const lines = (page) => page.$$eval("#log li", (lis) => lis.map((li) => ({
  cls: li.className, who: li.childNodes[1]?.textContent || "", text: li.childNodes[2]?.textContent || "",
})));

/** Waits until a log line of the page contains text. */
async function waitLine(page, text) {
  try {
    await page.waitForFunction(
      (t) => [...document.querySelectorAll("#log li")].some((li) => li.textContent.includes(t)), text, { timeout: T, polling: 20 });
  } catch (err) {
    const log = (await lines(page)).map((l) => `  ${l.cls} ${l.who}${l.text}`).join("\n");
    throw new Error(`${await page.textContent("#myname")}'s page never showed ${JSON.stringify(text)}; its log:\n${log}`);
  }
}

/** Waits until the current room's member list is exactly users. */
const waitMembers = (page, users) => page.waitForFunction((want) => {
  const got = [...document.querySelectorAll("#members li")].map((li) => li.textContent.replace(" (you)", ""));
  return JSON.stringify(got.sort()) === JSON.stringify([...want].sort());
}, users, { timeout: T, polling: 20 });

/** Waits until the page's state shows text (a prefix). */
const waitState = (page, text) => page.waitForFunction(
  (t) => document.getElementById("state").textContent.startsWith(t), text, { timeout: T, polling: 20 });

function check(ok, msg) {
  if (!ok) throw new Error(msg);
}

async function memory(browser) {
  const ctx = await browser.newContext();
  step("two tabs pick names");
  const alice = await login(ctx, "alice");
  const bob = await login(ctx, "bob");
  check((await alice.textContent("#myname")) === "alice", "alice's name");
  await waitMembers(alice, ["alice", "bob"]);

  step("both join room go and talk");
  for (const p of [alice, bob]) {
    await p.fill("#room", "go");
    await p.click("#joinform button");
    await p.waitForSelector("#rooms button[aria-current=true]:has-text('#go')", { timeout: T, polling: 20 });
  }
  await waitMembers(alice, ["alice", "bob"]);
  await say(alice, "hello from alice");
  await waitLine(bob, "hello from alice");
  await say(bob, "hi alice");
  await waitLine(alice, "hi alice");

  step("a direct message");
  await say(alice, "/msg bob psst");
  await waitLine(bob, "alice → bob: psst");
  await waitLine(alice, "alice → bob: psst"); // the sender's copy

  step("the member list follows bob leaving the room");
  await bob.click("#leave");
  await waitLine(bob, "You left #go.");
  await waitMembers(alice, ["alice"]);

  step("a direct message to a user connected nowhere says offline");
  await say(alice, "/msg carol are you there");
  await waitLine(alice, "carol is offline; the message was not delivered");
  const carol = (await lines(alice)).filter((l) => l.text.includes("are you there"));
  check(carol.length === 1 && carol[0].cls === "error" && carol[0].text.startsWith("carol is offline"),
    `the offline DM shows as undelivered, and only so: ${JSON.stringify(carol)}`);

  step("a reload keeps the tab's name; each tab has its own");
  await alice.reload();
  await online(alice);
  check((await alice.textContent("#myname")) === "alice", "alice after a reload");
  check((await bob.textContent("#myname")) === "bob", "bob's tab");
  await bob.close();
  await alice.click("#rooms button:has-text('#lobby')");
  await waitMembers(alice, ["alice"]);

  step("phone width: 375x667");
  const phone = await login(ctx, "dave", { width: 375, height: 667 });
  for (const sel of ["#text", "#sayform button"]) {
    const box = await phone.locator(sel).boundingBox();
    check(box && box.x >= 0 && box.y >= 0 && box.x + box.width <= 375 && box.y + box.height <= 667 && box.width > 20,
      `${sel} is visible at phone width: ${JSON.stringify(box)}`);
  }
  check(await phone.evaluate(() => document.documentElement.scrollWidth <= 375), "no horizontal scroll at phone width");
  await say(phone, "from a phone");
  await waitLine(alice, "from a phone");
}

async function redis(browser) {
  step("a tab on each node");
  const alice = await login(await browser.newContext(), "alice");
  let bob = await login(await browser.newContext(), "bob");
  for (let i = 0; (await nodeOf(bob)) === (await nodeOf(alice)); i++) {
    check(i < 10, "bob's tab never landed on the other node");
    await bob.reload();
    await online(bob);
  }
  const [na, nb] = [await nodeOf(alice), await nodeOf(bob)];
  step(`alice on ${na}, bob on ${nb}`);
  await waitMembers(alice, ["alice", "bob"]);
  await say(alice, "before");
  await waitLine(bob, "alice: before");

  step("Redis stops: both pages show the outage");
  await control("redis-stop");
  for (const p of [alice, bob]) await waitState(p, "offline: messages may be delayed");
  step("Redis starts again: both pages show the restore, and that messages may have been missed");
  await control("redis-start");
  for (const p of [alice, bob]) {
    await online(p);
    await waitLine(p, "messages may have been missed");
  }
  step("messages flow again, both ways, right after the restore");
  await say(alice, "back 1");
  await say(bob, "back 2");
  await say(alice, "/msg bob dm back 3");
  await say(bob, "/msg alice dm back 4");
  for (const p of [alice, bob]) {
    for (const t of ["alice: back 1", "bob: back 2", "alice → bob: dm back 3", "bob → alice: dm back 4"]) await waitLine(p, t);
  }
  const missedBefore = (await lines(alice)).filter((l) => l.text.includes("missed")).length;

  step(`alice's node ${na} is killed while bob sends`);
  const sent = [], sentAt = [];
  let killedAt = 0, backIndex = 0;
  for (let i = 1; i <= 300 && !(backIndex && i > backIndex + 5); i++) {
    const text = i % 10 === 0 ? `d${i}` : `m${i}`;
    await say(bob, i % 10 === 0 ? `/msg alice ${text}` : text);
    sent.push(text), sentAt.push(Date.now());
    if (i === 5) {
      await control("kill", { node: na });
      killedAt = Date.now();
    }
    // Go on until alice is back on the other node, and a little more.
    if (killedAt && !backIndex && i > 15 && (await alice.textContent("#state")) === `online (node ${nb})`) backIndex = i;
    await new Promise((r) => setTimeout(r, 30));
  }
  check(backIndex, "alice's tab came back");
  const rooms = sent.filter((s) => s.startsWith("m")), dms = sent.filter((s) => s.startsWith("d"));
  step(`bob sent ${rooms.length} room messages and ${dms.length} direct ones`);
  await waitLine(alice, `bob: ${rooms.at(-1)}`);
  await waitLine(alice, `bob → alice: ${dms.at(-1)}`);

  const got = await lines(alice);
  const gotRooms = got.filter((l) => l.who === "bob: " && /^m\d+$/.test(l.text)).map((l) => l.text);
  const gotDMs = got.filter((l) => l.who === "bob → alice: " && /^d\d+$/.test(l.text)).map((l) => l.text);
  check(JSON.stringify(gotRooms) === JSON.stringify(rooms), `alice's room messages, once each, in order:\n got ${gotRooms}\nwant ${rooms}`);
  check(JSON.stringify(gotDMs) === JSON.stringify(dms), `alice's direct messages: got ${gotDMs}, want ${dms}`);
  const missedAfter = got.filter((l) => l.text.includes("missed")).length;
  check(missedAfter === missedBefore, "the resume after the kill recovered everything");

  const states = await alice.evaluate(() => window.states);
  const cut = states.find((s) => s.t >= killedAt - 50 && s.text.startsWith("offline: the connection was lost"));
  check(cut, `alice's page showed the lost connection: ${JSON.stringify(states.slice(-6))}`);
  const back = states.find((s) => s.t > cut.t && s.text === `online (node ${nb})`);
  check(back, `alice's page came back on ${nb}: ${JSON.stringify(states.slice(-6))}`);
  const away = sentAt.filter((t) => t > cut.t && t < back.t).length;
  check(away > 0, "messages were sent while alice was away");
  step(`alice was away ${back.t - cut.t} ms, during which bob sent ${away} messages; all arrived once`);
  const bobGot = (await lines(bob)).filter((l) => l.who === "bob: " && /^m\d+$/.test(l.text)).map((l) => l.text);
  check(JSON.stringify(bobGot) === JSON.stringify(rooms), "bob got his own room messages once each");
}

run((browser) => (a.mode === "redis" ? redis(browser) : memory(browser)), 50000);
