package wshub

import (
	"fmt"
	"time"
)

// Limits bound what one client, one user and the whole node may take from
// this node, so that no single client, user or outsider takes it down. The
// zero value of each field selects the default in its comment; a negative
// value turns that limit off.
//
// The limits are per node. A cluster-wide limit per user needs presence
// (who is connected where) and will be a field of its own here.
type Limits struct {
	// SessionsPerUser bounds one user's sessions on this node. The next
	// upgrade is refused, before the WebSocket exists, with 429 Too Many
	// Requests and Retry-After. Default: 100.
	SessionsPerUser int

	// Sessions bounds the sessions of this node in all. The next upgrade
	// is refused with 503 Service Unavailable and Retry-After. Default: no
	// limit (set it below the process's file descriptor limit).
	Sessions int

	// TopicsPerSession bounds the topics one session is in. Session.Join
	// past it returns an error wrapping ErrLimit; a cluster-wide Hub.Join
	// skips that session and counts it in Stats.TopicsRefused. Default:
	// 1024.
	TopicsPerSession int

	// FramesPerSecond and FrameBurst bound the WebSocket frames a client
	// sends, as a token bucket: every frame counts, data, continuation and
	// control (ping, pong, close) alike, so that ping floods and floods of
	// empty fragments are bounded as much as messages are. Defaults: 200
	// frames a second, bursts of 400.
	FramesPerSecond float64
	FrameBurst      int

	// BytesPerSecond and ByteBurst bound the bytes a client sends, frame
	// headers included, as a token bucket. ByteBurst must be at least
	// Options.ReadLimit. Defaults: 1 MiB a second, bursts of 4 MiB (or
	// ReadLimit plus 14 bytes of header, if larger).
	BytesPerSecond float64
	ByteBurst      int

	// RatePolicy says what happens to a client that exceeds FramesPerSecond
	// or BytesPerSecond. Default: RateDelay.
	RatePolicy RatePolicy

	// RetryAfter is the Retry-After an upgrade refused by a limit gets.
	// Default: 5s.
	RetryAfter time.Duration
}

// RatePolicy says what happens to a client that sends faster than its
// Limits allow.
type RatePolicy int

// The rate policies.
const (
	// RateDelay stops reading from the client until its token buckets
	// refill, so that TCP slows the client down. Nothing is lost and a
	// well-behaved client never notices; a flooder only floods itself.
	// Every delay is counted in Stats.RateDelayed.
	RateDelay RatePolicy = iota
	// RateClose closes the client with status 1008 (policy violation),
	// counted in Stats.RateClosed.
	RateClose
)

// withDefaults returns l with its defaults filled in, given the read limit,
// and checks it.
func (l Limits) withDefaults(readLimit int64) (Limits, error) {
	setDefault(&l.SessionsPerUser, 100)
	setDefault(&l.Sessions, -1)
	setDefault(&l.TopicsPerSession, 1024)
	if l.FramesPerSecond == 0 {
		l.FramesPerSecond = 200
	}
	setDefault(&l.FrameBurst, 400)
	if l.BytesPerSecond == 0 {
		l.BytesPerSecond = 1 << 20
	}
	setDefault(&l.ByteBurst, max(4<<20, int(readLimit)+14))
	setDefault(&l.RetryAfter, 5*time.Second)
	switch {
	case l.RatePolicy != RateDelay && l.RatePolicy != RateClose:
		return l, fmt.Errorf("%w: Limits.RatePolicy %d", ErrInvalidOptions, l.RatePolicy)
	case l.ByteBurst > 0 && l.BytesPerSecond > 0 && int64(l.ByteBurst) < readLimit:
		return l, fmt.Errorf("%w: Limits.ByteBurst %d < ReadLimit %d", ErrInvalidOptions, l.ByteBurst, readLimit)
	case l.RetryAfter < 0:
		return l, fmt.Errorf("%w: Limits.RetryAfter %v < 0", ErrInvalidOptions, l.RetryAfter)
	}
	return l, nil
}
