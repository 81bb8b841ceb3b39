// Package webclient serves wshub.js, the examples' small browser client for
// a wshub hub: reconnect with backoff and jitter, resume with the heads of
// each channel kept for the page, the "!not-recovered" callback and the
// batched framing split into messages. It is a convenience: a page can
// speak to a hub with a plain WebSocket (see the wshub package's protocol).
//
// Every example mounts it at /wshub.js:
//
//	mux.Handle("GET /wshub.js", webclient.Handler())
//
// and its page imports it as an ES module:
//
//	import { connect } from "/wshub.js";
//	const conn = connect("/ws?name=alice", {
//	  onMessage(data, info) { ... },      // info: {channel, offset, binary}
//	  onNotRecovered(channel) { ... },    // reload that channel's state
//	  onState(state, info) { ... },       // "connecting" | "open" | "closed"
//	});
//	conn.send(text); // false while not open: nothing is queued
//	conn.close();    // no reconnect after this
//
// url is a ws(s), http(s) or relative URL with the application's own query
// (name=..., room=...), or a function returning one, called before every
// attempt, for a query that changes. data is a string for a text message and
// a Uint8Array for a binary one; conn.state is the current state.
//
// The options (all optional): clientKey (default a per-tab key kept in
// sessionStorage, sent as wshub_client), resume (default true: positions
// framing, wshub_since on reconnect), batch (default false: wshub_batch),
// minDelay and maxDelay (default 250 and 10000 ms: the backoff's bounds).
// It reconnects with full jitter up to an exponential ceiling, at once
// (within minDelay) after a close with 1012 (service restart) or 1001, and
// not at all after close() or a close with 1008 or 4000-4999. The JSDoc in
// wshub.js is the reference.
package webclient

import (
	_ "embed"
	"net/http"
)

// source is wshub.js.
//
//go:embed wshub.js
var source []byte

// Handler returns a handler that serves wshub.js as a JavaScript module,
// to be mounted at /wshub.js.
func Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "text/javascript; charset=utf-8")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Cache-Control", "no-cache")
		_, _ = w.Write(source)
	})
}
