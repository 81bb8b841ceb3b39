package wshub

import (
	"errors"
	"net/url"

	"github.com/coder/websocket"

	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/internal/envelope"
)

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
			if !s.waitRoom(m.size()) {
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
// messages only, never control operations such as Disconnect, and with
// SigningKeys only those signed for ch.
func (s *Session) recovered(ch string, e backplane.Entry) (outMsg, bool) {
	env, err := s.hub.decode(ch, e.Payload)
	if errors.Is(err, envelope.ErrForged) {
		s.hub.dropForged(ch, err)
		return outMsg{}, false
	}
	if err != nil || (env.Op != envelope.OpUser && env.Op != envelope.OpTopic) {
		return outMsg{}, false
	}
	if env.Op == envelope.OpTopic && (env.Arg == s.id || (s.framing.client != "" && env.Client == s.framing.client)) {
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
	for {
		s.mu.Lock()
		if !s.q.full(n) {
			s.mu.Unlock()
			return true
		}
		room := s.q.roomSignal()
		s.mu.Unlock()
		select {
		case <-s.ctx.Done():
			return false
		case <-room:
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
			s.rs.held -= p.m.size() + queuedOverhead
		}
		s.mu.Unlock()
		for _, p := range pend {
			if last != "" && !backplane.OffsetAfter(p.off, last) {
				continue
			}
			if !s.waitRoom(p.m.size()) {
				return
			}
			if s.enqueue(p.m) {
				s.hub.stats.delivered.Add(1)
			}
		}
	}
}
