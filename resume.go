package wshub

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/internal/envelope"
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

// Limits on what a client may ask to resume.
const (
	maxSince     = 64  // channels one connection may ask to resume
	maxOffset    = 128 // bytes of an offset
	maxClientKey = 64  // bytes of a client key
)

// errBadResume is why an upgrade with unusable resume parameters is
// refused.
var errBadResume = errors.New("wshub: bad resume parameters")

// resumeState is a session's resume in progress, guarded by Session.mu.
// Live messages of a channel being recovered wait in pending until the
// recovered ones are queued.
type resumeState struct {
	since   map[string]string // channel → offset to resume after
	pending map[string][]pendingMsg
	held    int // bytes in pending, counted as the send queue counts them
	// floor is, per recovered channel, the last offset recovery queued:
	// the live copy of a message recovery already read from the log may
	// arrive later, and is dropped.
	floor map[string]string
	// overflow marks channels whose held-back live messages outgrew the
	// send queue: they were dropped, and the channel is not recovered.
	overflow map[string]bool
}

type pendingMsg struct {
	m   outMsg
	off string
}

// resumeParams are the resume parameters of an upgrade request.
type resumeParams struct {
	positions bool
	since     map[string]string // channel → offset to resume after
	client    string            // ClientParam
}

// parseResume reads the resume parameters of an upgrade request. It
// refuses, with an error wrapping errBadResume, channels that are not a
// user's or a topic's or exceed the hub's name limits, over-long offsets,
// more than maxSince channels and malformed client keys, so that nothing
// unbounded is kept or echoed back.
func parseResume(r *http.Request) (resumeParams, error) {
	q := r.URL.Query()
	var p resumeParams
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

// delivery is one message from the backplane on its way to this node's
// sessions: the message, where it came from and, built once on first need
// and shared by every recipient, its positions framing.
type delivery struct {
	msg          outMsg
	channel, off string
	framed       []byte
}

// framedMsg returns the message in the positions framing.
func (d *delivery) framedMsg() outMsg {
	if d.framed == nil {
		d.framed = frame(head(d.off, d.channel), d.msg.data)
	}
	return outMsg{typ: d.msg.typ, data: d.framed}
}

// deliver queues d to s, in the positions framing if s asked for it, and
// holds it back while s recovers d's channel.
func (s *Session) deliver(d *delivery) bool {
	if !s.positions {
		return s.enqueue(d.msg)
	}
	m, channel, off := d.framedMsg(), d.channel, d.off
	if off != "" {
		s.mu.Lock()
		if rs := s.rs; rs != nil {
			if pend, ok := rs.pending[channel]; ok {
				o := &s.hub.opts
				if len(pend) >= o.SendQueueLen || rs.held+len(m.data)+queuedOverhead > o.SendQueueBytes {
					// Held back longer than the queue would hold: give
					// the channel up rather than grow without bound.
					rs.overflow[channel] = true
					for _, p := range pend {
						rs.held -= len(p.m.data) + queuedOverhead
					}
					rs.pending[channel] = pend[:0]
				}
				if !rs.overflow[channel] {
					rs.pending[channel] = append(rs.pending[channel], pendingMsg{m, off})
					rs.held += len(m.data) + queuedOverhead
				}
				s.mu.Unlock()
				return !rs.overflow[channel]
			}
			if f, ok := rs.floor[channel]; ok && !backplane.OffsetAfter(off, f) {
				s.mu.Unlock()
				return false // recovered already
			}
		}
		s.mu.Unlock()
	}
	return s.enqueue(m)
}

// startResume prepares s to recover the channels in since: from now on,
// live messages of those channels wait until recovery has queued what the
// client missed. It must run before s can receive anything.
func (s *Session) startResume(since map[string]string) {
	rs := &resumeState{
		since:    since,
		pending:  make(map[string][]pendingMsg, len(since)),
		floor:    make(map[string]string, len(since)),
		overflow: make(map[string]bool),
	}
	for ch := range since {
		rs.pending[ch] = nil
	}
	s.rs = rs
}

// resume recovers, one channel after another, what the client missed, and
// then releases the live messages held back. It runs in its own goroutine,
// owned by s.wg, and ends with the session. The resume state stays, to
// drop late live copies of recovered messages.
func (s *Session) resume(log backplane.Log) {
	defer s.wg.Done()
	s.mu.Lock()
	rs := s.rs
	s.mu.Unlock()
	if rs == nil {
		return
	}
	held := make(map[string]bool)
	held[userPrefix+s.userID] = true
	for _, t := range s.Topics() {
		held[topicPrefix+t] = true
	}
	for ch, off := range rs.since {
		ok, last := false, off
		if held[ch] && log != nil {
			ok, last = s.recover(log, ch, off)
		}
		s.mu.Lock()
		ok = ok && !rs.overflow[ch]
		s.mu.Unlock()
		status := "!recovered "
		if !ok {
			status = "!not-recovered "
			last = ""
		}
		if s.ctx.Err() != nil {
			s.mu.Lock()
			clear(rs.pending) // nothing will release them
			rs.held = 0
			rs.overflow = map[string]bool{}
			s.mu.Unlock()
			return
		}
		s.release(ch, status+url.PathEscape(ch), last)
	}
}

// recover queues the messages of ch after off, page by page, without
// overflowing the send queue. It reports whether the log still had them,
// and the offset of the last one queued.
func (s *Session) recover(log backplane.Log, ch, off string) (bool, string) {
	page := max(1, min(256, s.hub.opts.SendQueueLen/2))
	last := off
	for {
		entries, err := log.Read(s.ctx, ch, last, page)
		if err != nil {
			if !errors.Is(err, backplane.ErrNotRetained) && !errors.Is(err, backplane.ErrInvalidOffset) && s.ctx.Err() == nil {
				s.hub.log.Warn("wshub: resume read failed", "session", s.id, "channel", ch, "err", err)
			}
			return false, last
		}
		for _, e := range entries {
			last = e.Offset
			m, ok := s.recovered(ch, e)
			if !ok {
				continue
			}
			if !s.waitRoom(len(m.data)) {
				return false, last
			}
			if s.enqueue(m) {
				s.hub.stats.delivered.Add(1)
			}
		}
		if len(entries) < page {
			return true, last
		}
	}
}

// recovered turns a log entry into the message the client should get: data
// messages only, never control operations such as Disconnect.
func (s *Session) recovered(ch string, e backplane.Entry) (outMsg, bool) {
	env, err := envelope.Decode(e.Payload)
	if err != nil || (env.Op != envelope.OpUser && env.Op != envelope.OpTopic) {
		return outMsg{}, false
	}
	if env.Op == envelope.OpTopic && (env.Arg == s.id || (s.clientKey != "" && env.Client == s.clientKey)) {
		return outMsg{}, false // a broadcast that left this client out
	}
	m := outMsg{typ: websocket.MessageText, data: frame(head(e.Offset, ch), env.Payload)}
	if env.Flags&envelope.FlagBinary != 0 {
		m.typ = websocket.MessageBinary
	}
	return m, true
}

// waitRoom waits until the send queue has room for one more message of n
// bytes, or the session ends, so that recovery never trips the session's
// slow-client policy.
func (s *Session) waitRoom(n int) bool {
	var t *time.Ticker
	for {
		s.mu.Lock()
		room := !s.fullLocked(n)
		s.mu.Unlock()
		if room {
			if t != nil {
				t.Stop()
			}
			return true
		}
		if t == nil {
			t = time.NewTicker(2 * time.Millisecond)
			defer t.Stop()
		}
		select {
		case <-s.ctx.Done():
			return false
		case <-t.C:
		}
	}
}

// release queues a status message for ch, then the live messages held
// back that are newer than last (the last offset recovery queued; empty
// when it queued nothing usable), and then lets later ones through.
func (s *Session) release(ch, status, last string) {
	st := frame(status, nil)
	if !s.waitRoom(len(st)) {
		return
	}
	_ = s.enqueue(outMsg{typ: websocket.MessageText, data: st})
	for {
		s.mu.Lock()
		pend := s.rs.pending[ch]
		if len(pend) == 0 {
			// Nothing slipped in since the last round: from now on live
			// messages of ch go straight to the queue, after these,
			// unless recovery queued them already.
			delete(s.rs.pending, ch)
			if last != "" {
				s.rs.floor[ch] = last
			}
			s.mu.Unlock()
			return
		}
		s.rs.pending[ch] = pend[:0:0]
		for _, p := range pend {
			s.rs.held -= len(p.m.data) + queuedOverhead
		}
		s.mu.Unlock()
		for _, p := range pend {
			if last != "" && !backplane.OffsetAfter(p.off, last) {
				continue
			}
			if !s.waitRoom(len(p.m.data)) {
				return
			}
			if s.enqueue(p.m) {
				s.hub.stats.delivered.Add(1)
			}
		}
	}
}
