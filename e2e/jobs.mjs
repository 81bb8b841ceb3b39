// Browser test of examples/jobs (run by examples/jobs/browser_test.go): the
// page submits jobs over its WebSocket, and every one gets exactly one
// result, matched by ID, shown in the table and arriving out of order. With
// mode "memory" (one node, workers inside) the connection is cut with 1012
// while results are on their way, and the page resumes; with mode "redis"
// (two node processes and a worker process on one redis-server, behind a
// failover proxy) the page's node is killed mid-stream and the page resumes
// on the other node, then Redis is stopped and restarted: the page shows
// the outage, and the jobs queued before it and sent during it are answered
// once Redis is back.
import { run, args, step, control } from "./lib.mjs";

const a = args();

run(async (browser) => {
  const page = await browser.newPage({ viewport: { width: 900, height: 900 } });
  page.on("pageerror", (e) => console.log(`pageerror: ${e}`));
  page.on("console", (m) => m.type() === "error" && console.log(`console: ${m.text()}`));

  const text = (sel) => page.locator(sel).innerText();
  /** waits until the text of sel matches re. */
  async function waitText(sel, re, timeout = 15000) {
    try {
      await page.waitForFunction(([s, src]) => new RegExp(src).test(document.querySelector(s)?.textContent ?? ""), [sel, re.source], { timeout });
    } catch (err) {
      throw new Error(`${sel} never matched ${re}: it says ${JSON.stringify(await text(sel))}; ${await text("#summary")}`);
    }
  }
  const state = () => page.evaluate(() => window.jobsPage);
  /** clicks "8 random jobs" and returns their IDs. */
  async function burst() {
    const before = (await state()).submitted.length;
    await page.click("#burst");
    const ids = (await state()).submitted.slice(before);
    if (ids.length !== 8) throw new Error(`burst submitted ${ids.length} jobs`);
    return ids;
  }
  async function submit(input) {
    await page.fill("#input", input);
    await page.click("#submit");
    const s = await state();
    return s.submitted[s.submitted.length - 1];
  }
  /** waits until every job of ids is queued (or already answered). */
  async function waitQueued(ids) {
    await page.waitForFunction((ids) => ids.every((id) => /^(queued|done|failed)/.test(document.querySelector(`#job-${id} .status`)?.textContent ?? "")), ids, { timeout: 15000 });
  }
  async function waitAnswered(n, timeout = 20000) {
    await waitText("#summary", new RegExp(`answered ${n} of ${n}\\b`), timeout);
  }
  /** checks that each job submitted got exactly one result, the right one, shown in its row. */
  async function checkExactlyOnce() {
    const s = await state();
    const problems = await page.evaluate(() => {
      const s = window.jobsPage, out = [];
      for (const id of s.submitted) {
        const got = s.arrivals.filter((r) => r.id === id);
        if (got.length !== 1) { out.push(`${id}: ${got.length} results`); continue; }
        const tr = document.getElementById(`job-${id}`);
        const input = tr.querySelector(".input").textContent, shown = tr.querySelector(".output").textContent;
        const r = got[0];
        if (shown !== (r.error || r.output)) out.push(`${id}: row shows ${shown}, arrived ${r.output || r.error}`);
        if (r.error) { if (!/^\d+$/.test(input)) continue; out.push(`${id}: ${r.error}`); continue; }
        const product = r.output.split(" × ").reduce((p, f) => { const [b, e = "1"] = f.split("^"); return p * BigInt(b) ** BigInt(e); }, 1n);
        if (product !== BigInt(input)) out.push(`${id}: ${input} is not ${r.output}`);
        if (!/^done/.test(tr.querySelector(".status").textContent)) out.push(`${id}: status ${tr.querySelector(".status").textContent}`);
      }
      for (const r of s.arrivals) if (!s.submitted.includes(r.id)) out.push(`${r.id}: a result for a job this page did not send`);
      if (s.duplicates) out.push(`${s.duplicates} duplicates`);
      return out;
    });
    if (problems.length) throw new Error(`results: ${problems.join("; ")}`);
    step(`${s.submitted.length} jobs, ${s.arrivals.length} results, each once; order: ${await text("#arrivals")}`);
  }

  step(`open ${a.url}/?user=alice (${a.mode})`);
  await page.goto(`${a.url}/?user=alice`);
  await waitText("#conn", /^connected to \S+/);
  await waitText("#backplane", /^backplane up/);
  const first = (await text("#conn")).replace("connected to ", "");
  step(`connected to ${first}`);
  if (a.mode === "redis" && first !== "a1") throw new Error(`connected to ${first}, want a1 (the proxy's first)`);

  step("a burst of 8 jobs");
  const b1 = await burst();
  await waitAnswered(8);
  await checkExactlyOnce();
  if (a.mode === "memory") {
    // The worker makes later jobs of a burst quicker: the results come in
    // reverse, and the page says so.
    await waitText("#summary", /out of order/);
    const order = (await state()).arrivals.map((r) => r.id);
    if (order.join() !== [...b1].reverse().join()) throw new Error(`arrival order ${order}, want ${[...b1].reverse()}`);
  }

  step("8 more jobs, and the connection is lost while they are computed");
  const b2 = await burst();
  await waitQueued(b2);
  const opens = (await state()).states.filter((s) => s === "open").length;
  const before = (await state()).arrivals.length;
  if (a.mode === "memory") {
    await control("disconnect", { user: "alice" });
  } else {
    await control("kill");
    step("node a1 killed");
  }
  await page.waitForFunction((n) => window.jobsPage.states.filter((s) => s === "open").length > n, opens, { timeout: 15000 });
  const second = a.mode === "redis" ? "b1" : first;
  await waitText("#conn", new RegExp(`^connected to ${second}$`));
  step(`reconnected to ${second} with ${before - 8} of 8 results in hand`);
  if (before >= 16) throw new Error("every result came before the cut: the test proves nothing");
  await waitAnswered(16);
  await checkExactlyOnce();

  if (a.mode === "redis") {
    step("8 jobs queued, then Redis stops");
    const b3 = await burst();
    await waitQueued(b3);
    await control("redis-stop");
    await waitText("#backplane", /^backplane down/);
    step(`the page shows: ${await text("#backplane")}`);
    const during = await submit("360");
    await waitText(`#job-${during} .status`, /^waiting/);
    step(`a job sent during the outage: ${await text(`#job-${during} .status`)}`);
    await control("redis-start");
    await waitText("#backplane", /^backplane up/, 20000);
    step("Redis is back");
    await waitAnswered(25, 30000);
    await checkExactlyOnce();
    const out = await text(`#job-${during} .output`);
    if (out !== "2^3 × 3^2 × 5") throw new Error(`360 answered ${out}`);
  }

  step("a job that cannot be computed is answered with its error");
  const bad = await submit("not a number");
  await waitText(`#job-${bad} .status`, /^failed/);
  await waitText(`#job-${bad} .output`, /not a whole number/);

  const s = await state();
  const lost = s.notices.filter((n) => /lost/.test(n));
  if (lost.length) throw new Error(`notices: ${lost}`);
  step(`summary: ${await text("#summary")}; states: ${s.states.join(" ")}; nodes: ${s.nodes.join(" ")}`);
}, 55000);
