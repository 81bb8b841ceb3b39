package wshub

import (
	"errors"
	"os"
	"sync/atomic"
	"time"

	"github.com/wshub/wshub/internal/envelope"
)

// This file holds what the hub measures for Metrics beyond its Stats
// counters, and the hooks that measure it: each is called from one line of
// the path it measures (publish, the read loop, enqueue, the writer, the
// fan-out, a session's end), so that those paths carry as little of it as
// possible.

// meters are the hub's measurements beyond Stats. Every field is updated
// with atomics, on the paths they measure, without allocating.
type meters struct {
	bytesIn, written, bytesOut atomic.Uint64
	publishErrors              atomic.Uint64
	closed                     [numCloseReasons]atomic.Uint64
	publishToEnqueue           latency
	enqueueToWrite             latency
}

// endReason is why a session ended, as Closes counts it.
type endReason int

const (
	closeSlowQueueFull endReason = iota
	closeSlowWriteTimeout
	closeRateLimit
	closeInvalidText
	closeShutdown
	closeError
	closeApp
	closeNormal
	numCloseReasons
)

// closes returns the counts of sessions ended, by reason.
func (m *meters) closes() Closes {
	c := &m.closed
	return Closes{
		SlowQueueFull:    c[closeSlowQueueFull].Load(),
		SlowWriteTimeout: c[closeSlowWriteTimeout].Load(),
		RateLimit:        c[closeRateLimit].Load(),
		InvalidText:      c[closeInvalidText].Load(),
		Shutdown:         c[closeShutdown].Load(),
		Error:            c[closeError].Load(),
		App:              c[closeApp].Load(),
		Normal:           c[closeNormal].Load(),
	}
}

// sessionMeter is what a session keeps for the write latency.
type sessionMeter struct {
	// queuedAt is when the queue last went from empty to not empty (the
	// enqueue time of its oldest message, or earlier once SlowDropOldest
	// dropped that one), on the monotonic clock. Guarded by Session.mu.
	queuedAt int64
	// batchAt is queuedAt of the batch the writer is writing; only the
	// writer touches it.
	batchAt int64
}

// markQueued notes the time when s's queue, about to take a message, is
// empty: that message is the oldest of the next batch. s.mu is held.
func (s *Session) markQueued() {
	if s.q.empty() {
		s.meter.queuedAt = monotonic()
	}
}

// takeMetered is s.q.take for the writer, noting when the batch's oldest message
// was queued. What a partial take leaves queued keeps that time: the
// next batch's latency is then an upper bound. s.mu is held.
func (s *Session) takeMetered(prev []outMsg) []outMsg {
	s.meter.batchAt = s.meter.queuedAt
	return s.q.take(prev)
}

// writeMetered writes batch with writeBatch and, when the write succeeds,
// counts its messages and bytes and observes the time since its oldest
// message was queued.
func (s *Session) writeMetered(batch []outMsg) error {
	n := 0
	for i := range batch {
		n += payloadLen(batch[i])
	}
	err := s.writeBatch(batch)
	if err == nil {
		m := &s.hub.meters
		m.written.Add(uint64(len(batch)))
		m.bytesOut.Add(uint64(n))
		m.enqueueToWrite.observe(time.Duration(monotonic() - s.meter.batchAt))
	}
	return err
}

// wroteThrough counts a message of size payload bytes that the fan-out
// wrote to the socket itself (see corkConn.writeThrough): whole, it counts
// as written, with no time in a queue; in part, the writer finishes it and
// counts it (with no bytes: they are counted here).
func (s *Session) wroteThrough(size int, whole bool) {
	m := &s.hub.meters
	m.bytesOut.Add(uint64(size))
	if whole {
		m.written.Add(1)
		m.enqueueToWrite.observe(0)
	}
}

// payloadLen returns the bytes of m's message, without WebSocket framing.
func payloadLen(m outMsg) int {
	switch m.typ {
	case restMsg:
		return 0 // counted when its frame was begun
	case frameMsg:
		return len(m.data) - frameHeadLen(m.data)
	}
	return len(m.data)
}

// frameHeadLen returns the length of the header of the unmasked frame
// that b begins with.
func frameHeadLen(b []byte) int {
	if len(b) < 2 {
		return len(b)
	}
	switch b[1] & 0x7f {
	case 126:
		return 4
	case 127:
		return 10
	}
	return 2
}

// queueDepth returns the number of messages in s's send queue and the bytes
// they count against Options.SendQueueBytes.
func (s *Session) queueDepth() (messages, bytes int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.q.msgs), s.q.bytes
}

// stampPublish writes the publish time into e when it carries a message,
// for the receivers' PublishToEnqueue.
func stampPublish(e *envelope.Envelope) {
	switch e.Op {
	case envelope.OpUser, envelope.OpTopic, envelope.OpSession:
		e.Published = uint64(time.Now().UnixMicro())
	}
}

// delivered counts n messages of e queued to this node's sessions and,
// when there were some and e says when it was published, observes the time
// since.
func (h *Hub) delivered(e *envelope.Envelope, n uint64) {
	h.stats.delivered.Add(n)
	if n > 0 && e.Published != 0 {
		d := time.Now().UnixMicro() - int64(min(e.Published, 1<<62))
		h.meters.publishToEnqueue.observe(time.Duration(d) * time.Microsecond)
	}
}

// countClose counts s, which ended with err (the read loop's error, wrapped
// in why the hub closed it), under the first reason of Closes that applies.
func (h *Hub) countClose(s *Session, err error) {
	h.meters.closed[h.whyClosed(s, err)].Add(1)
}

func (h *Hub) whyClosed(s *Session, err error) endReason {
	s.mu.Lock()
	slow, violation, code := s.slowErr, s.violation, s.closeCode
	s.mu.Unlock()
	switch {
	case slow != nil && errors.Is(slow, os.ErrDeadlineExceeded):
		return closeSlowWriteTimeout
	case slow != nil:
		return closeSlowQueueFull
	case errors.Is(violation, ErrRateLimit):
		return closeRateLimit
	case errors.Is(violation, ErrInvalidText):
		return closeInvalidText
	case errors.Is(err, ErrHookPanic):
		return closeError
	case code == 1012 || h.isClosed(): // StatusServiceRestart, from Drain
		return closeShutdown
	case code != 0:
		return closeApp // closed by Session.Close, Disconnect or OnConnect
	}
	// A close from the client that reports no error: 1000, 1001, a close
	// frame without a status (1005) or an application's status.
	switch cs := CloseStatus(err); {
	case cs == StatusNormalClosure || cs == StatusGoingAway || cs == 1005 || cs >= 3000 && cs <= 4999:
		return closeNormal
	}
	return closeError
}

// snapshot returns the registered sessions and the number of users and
// topics they hold, under the read lock only while it copies the list.
func (r *registry) snapshot() (sessions []*Session, users, topics int) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	sessions = make([]*Session, 0, len(r.sessions))
	for _, s := range r.sessions {
		sessions = append(sessions, s)
	}
	return sessions, len(r.users), len(r.topics)
}
