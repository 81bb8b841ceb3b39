// wshub.js: a small, optional browser client for a wshub hub. A plain
// WebSocket is enough to talk to one; this adds what every page ends up
// writing: reconnect with exponential backoff and full jitter (at once after
// a 1012 or 1001, when a node restarts), resume (the last head of each
// channel kept and sent back with wshub_since, "!not-recovered" reported),
// a per-tab client key, and the batched framing split into its messages.
//
//   import { connect } from "/wshub.js";
//   const conn = connect("/ws?name=alice", { onMessage: (data) => show(JSON.parse(data)) });
//   conn.send(JSON.stringify({ type: "say", text: "hi" })); // false while not open
//   conn.close(); // for good

/**
 * @typedef {{channel: string, offset: string, binary: boolean}} MessageInfo
 *   channel ("u:user" or "t:topic") and offset are "" for a message without
 *   a position (a reply to this session, a backplane without logs).
 * @typedef {"connecting" | "open" | "closed"} State
 * @typedef {{code?: number, reason?: string, attempt: number, delay?: number | null}} StateInfo
 *   code and reason of the close; attempt counts the connections since the
 *   last one that stayed open; delay is the wait in ms before the next
 *   attempt, null when the client will not reconnect.
 * @typedef {object} Options
 * @property {string} [clientKey] sent as wshub_client; default a random key
 *   kept per tab in sessionStorage; "" sends none.
 * @property {boolean} [resume=true] positions framing, resumed on reconnect.
 * @property {boolean} [batch=false] batched framing (wshub_batch).
 * @property {(data: string | Uint8Array, info: MessageInfo) => void} [onMessage]
 *   a text message as a string, a binary one as a Uint8Array.
 * @property {(channel: string) => void} [onNotRecovered] the hub could not
 *   send what this tab missed on channel: reload that state.
 * @property {(state: State, info: StateInfo) => void} [onState]
 * @property {number} [minDelay=250] ms, the shortest backoff.
 * @property {number} [maxDelay=10000] ms, the longest backoff.
 * @typedef {{send(data: string | ArrayBufferLike | ArrayBufferView | Blob): boolean,
 *   close(): void, readonly state: State}} Connection
 */

const MAX_HEADS = 64; // channels the hub resumes at most (wshub: maxSince)
const STABLE = 5000; // ms open after which backoff starts over

/** @returns {string} this tab's client key, made once. */
function tabKey() {
  let k = sessionStorage.getItem("wshub-client");
  if (!k) {
    k = [...crypto.getRandomValues(new Uint8Array(12))].map((b) => b.toString(16).padStart(2, "0")).join("");
    sessionStorage.setItem("wshub-client", k);
  }
  return k;
}

/**
 * connect opens a connection to url and keeps it open until close(). The
 * callbacks run only after connect has returned.
 * @param {string | (() => string)} url ws(s):, http(s): or relative URL with
 *   the application's own query; a function is called for every attempt,
 *   for a query that changes (rooms joined since).
 * @param {Options} [opts]
 * @returns {Connection}
 */
export function connect(url, opts = {}) {
  const { resume = true, batch = false, minDelay = 250, maxDelay = 10000 } = opts;
  const key = opts.clientKey ?? tabKey();
  const heads = new Map(); // channel → last head, oldest first
  const dec = new TextDecoder();
  /** @type {WebSocket | null} */ let ws = null;
  /** @type {State} */ let state = "connecting";
  let attempt = 0, timer = 0, stable = 0, done = false;

  const setState = (/** @type {State} */ s, /** @type {StateInfo} */ info) => { state = s; opts.onState?.(s, info); };

  // deliver handles one message, its head first when resuming.
  function deliver(/** @type {string | Uint8Array} */ data, /** @type {boolean} */ binary) {
    let head = "";
    const i = !resume ? -1 : typeof data === "string" ? data.indexOf("\n") : data.indexOf(10);
    if (i >= 0) {
      head = typeof data === "string" ? data.slice(0, i) : dec.decode(data.subarray(0, i));
      data = data.slice(i + 1);
    }
    const [offset, esc = ""] = head.split(" "), channel = decodeURIComponent(esc);
    if (offset === "!not-recovered") { heads.delete(channel); opts.onNotRecovered?.(channel); return; }
    if (offset === "!recovered") return;
    if (channel) {
      heads.delete(channel); // the most recent last
      heads.set(channel, head);
      if (heads.size > MAX_HEADS) heads.delete(heads.keys().next().value);
    }
    opts.onMessage?.(data, { channel, offset: channel ? offset : "", binary });
  }

  function open() {
    const u = new URL(typeof url === "function" ? url() : url, location.href);
    u.protocol = u.protocol.replace(/^http/, "ws");
    for (const p of ["wshub_positions", "wshub_since", "wshub_client", "wshub_batch"]) u.searchParams.delete(p);
    if (resume) u.searchParams.set("wshub_positions", "1");
    if (resume) for (const h of heads.values()) u.searchParams.append("wshub_since", h);
    if (key) u.searchParams.set("wshub_client", key);
    if (batch) u.searchParams.set("wshub_batch", "1");
    setState("connecting", { attempt });
    const sock = (ws = new WebSocket(u));
    sock.binaryType = "arraybuffer";
    sock.onopen = () => {
      setState("open", { attempt });
      stable = setTimeout(() => (attempt = 0), STABLE);
    };
    sock.onmessage = (e) => {
      if (typeof e.data === "string") return deliver(e.data, false);
      const bytes = new Uint8Array(e.data);
      if (!batch) return deliver(bytes, true);
      const v = new DataView(e.data);
      for (let o = 0; o + 5 <= bytes.length; ) {
        const n = v.getUint32(o), body = bytes.subarray(o + 5, o + 5 + n);
        deliver(v.getUint8(o + 4) === 1 ? dec.decode(body) : body, v.getUint8(o + 4) !== 1);
        o += 5 + n;
      }
    };
    sock.onclose = (e) => {
      if (ws !== sock) return;
      ws = null;
      clearTimeout(stable);
      const policy = e.code === 1008 || (e.code >= 4000 && e.code < 5000);
      let delay = null;
      if (!done && !policy) {
        attempt++;
        // A node restarting or going away: to another one at once, spread a
        // little; anything else: full jitter over an exponential ceiling.
        delay = e.code === 1012 || e.code === 1001 ? Math.random() * minDelay
          : minDelay + Math.random() * (Math.min(maxDelay, minDelay * 2 ** attempt) - minDelay);
        timer = setTimeout(open, delay);
      }
      setState("closed", { code: e.code, reason: e.reason, attempt, delay });
    };
  }

  // The first attempt starts once connect has returned: no callback runs
  // before the caller holds the connection.
  queueMicrotask(() => done || open());
  return {
    send(data) {
      if (!ws || ws.readyState !== WebSocket.OPEN) return false;
      ws.send(data);
      return true;
    },
    close() {
      done = true;
      clearTimeout(timer);
      if (ws) ws.close(1000);
      else if (state !== "closed") setState("closed", { code: 1000, reason: "", attempt, delay: null });
    },
    get state() { return state; },
  };
}
