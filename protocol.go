package wshub

// The protocol a client sees, all of it opt-in. Without any of the query
// parameters below, every message reaches the client as one WebSocket
// message, byte for byte, and the hub adds nothing.
//
// Positions (PositionsParam): every message is "<head>\n<payload>". The
// head is "<offset> <channel>" for a user or topic message of a backplane
// that keeps logs, where offset is "<epoch>:<position>" (see backplane.Log)
// and channel is "u:<user>" or "t:<topic>", path-escaped; it is empty for
// other messages; after a resume it is "!recovered <channel>" or
// "!not-recovered <channel>" (a message with no payload).
//
// Resume (SinceParam, ClientParam): see SinceParam and the package
// documentation ("Resume").
//
// Batched framing (BatchParam): binary WebSocket messages of records: a
// 4-byte big-endian length n, a 1-byte type (1 text, 2 binary) and the n
// bytes of one message, each of which may itself carry a head.

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// Query parameters of the upgrade request that opt a connection into
// positions and resume. See the package documentation ("Resume").
const (
	// PositionsParam asks for the positions framing: every message the
	// hub sends is "<head>\n<payload>", where head is "<offset> <channel>"
	// for a message of a backplane that keeps logs, empty for others, and
	// "!recovered <channel>" or "!not-recovered <channel>" after a resume.
	PositionsParam = "wshub_positions"
	// SinceParam, repeated, gives the head of the last message the client
	// received on a channel: "<offset> <channel>". The hub sends what the
	// client missed on that channel before anything newer, or tells it
	// "!not-recovered". It implies PositionsParam. The channel is "u:" or
	// "t:" and a name of at most MaxNameLength bytes, and the offset at
	// most maxOffset bytes; an upgrade with another one is refused with
	// 400.
	SinceParam = "wshub_since"
	// ClientParam names the client behind the connection: a key the client
	// makes once (per browser tab, say) and sends with every connection,
	// 1 to 64 letters, digits, '-' or '_'. A resume then also skips the
	// broadcasts that the client's earlier connections were left out of
	// with Except: the messages a chat client sent itself, say. Another
	// tab of the same user, with its own key, still gets them.
	ClientParam = "wshub_client"
)

// BatchParam is the query parameter of the upgrade request that opts a
// connection into batched framing: the hub then sends binary WebSocket
// messages that each carry one or more of the connection's messages, as
// records of a 4-byte big-endian length n, a 1-byte type (1 text, 2 binary)
// and the n bytes of the message. A session's writer packs what is queued
// when it writes, up to 64 KiB per WebSocket message, so a client that falls
// behind catches up with few large messages instead of many small ones. In
// a browser:
//
//	ws.binaryType = "arraybuffer";
//	ws.onmessage = (ev) => {
//	  const v = new DataView(ev.data);
//	  for (let o = 0; o < v.byteLength; ) {
//	    const n = v.getUint32(o), type = v.getUint8(o + 4);
//	    const body = new Uint8Array(ev.data, o + 5, n);
//	    handle(type === 1 ? new TextDecoder().decode(body) : body);
//	    o += 5 + n;
//	  }
//	};
const BatchParam = "wshub_batch"

// Limits on what a client may ask to resume.
const (
	maxSince     = 64  // channels one connection may ask to resume
	maxOffset    = 128 // bytes of an offset
	maxClientKey = 64  // bytes of a client key
)

// batchLimit is the size up to which records are packed into one
// WebSocket message; a larger message travels alone in its own.
const batchLimit = 64 << 10

// recordHead is the size of a record's length and type.
const recordHead = 5

// errBadResume is why an upgrade with unusable resume parameters is
// refused.
var errBadResume = errors.New("wshub: bad resume parameters")

// framing is what a connection asked for with the parameters above, read
// once from its upgrade request: its framing, and what it resumes.
type framing struct {
	positions bool              // PositionsParam, or implied by SinceParam
	packed    bool              // BatchParam
	since     map[string]string // SinceParam: channel → offset to resume after
	client    string            // ClientParam
}

// parseFraming reads the framing parameters of an upgrade request. It
// refuses, with an error wrapping errBadResume, channels that are not a
// user's or a topic's or exceed the hub's name limits, over-long offsets,
// more than maxSince channels and malformed client keys, so that nothing
// unbounded is kept or echoed back.
func parseFraming(r *http.Request) (framing, error) {
	q := r.URL.Query()
	p := framing{packed: q.Get(BatchParam) != ""}
	if vs := q[SinceParam]; len(vs) > maxSince {
		return p, fmt.Errorf("%w: %d %s, at most %d", errBadResume, len(vs), SinceParam, maxSince)
	}
	for _, v := range q[SinceParam] {
		off, esc, ok := strings.Cut(v, " ")
		ch, err := url.PathUnescape(esc)
		if !ok || off == "" || len(off) > maxOffset || err != nil || !resumable(ch) {
			return p, fmt.Errorf("%w: %s %.40q", errBadResume, SinceParam, v)
		}
		if p.since == nil {
			p.since = make(map[string]string)
		}
		p.since[ch] = off
	}
	if c := q.Get(ClientParam); c != "" || q.Has(ClientParam) {
		if !validClientKey(c) {
			return p, fmt.Errorf("%w: %s %.40q", errBadResume, ClientParam, c)
		}
		p.client = c
	}
	p.positions = q.Get(PositionsParam) != "" || p.since != nil
	return p, nil
}

// resumable reports whether ch is a channel a client may resume: a user's
// or a topic's, with a name within the hub's limits.
func resumable(ch string) bool {
	name, ok := strings.CutPrefix(ch, userPrefix)
	if !ok {
		name, ok = strings.CutPrefix(ch, topicPrefix)
	}
	return ok && name != "" && len(name) <= MaxNameLength
}

// validClientKey reports whether k is a client key ClientParam accepts.
func validClientKey(k string) bool {
	if k == "" || len(k) > maxClientKey {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// head returns the positions framing's head for a message.
func head(off, channel string) string {
	if off == "" {
		return ""
	}
	return off + " " + url.PathEscape(channel)
}

// frame puts the positions head in front of data.
func frame(h string, data []byte) []byte {
	b := make([]byte, 0, len(h)+1+len(data))
	b = append(b, h...)
	b = append(b, '\n')
	return append(b, data...)
}
