package wshub

import (
	"fmt"
	"math"
	"strconv"
	"time"
)

// Limits bound what one client, one user and the whole node may take from
// this node, so that no single client, user or outsider takes it down. The
// zero value of each field selects the default in its comment; a negative
// value turns that limit off.
//
// The limits are per node, except ClusterSessionsPerUser.
type Limits struct {
	// SessionsPerUser bounds one user's sessions on this node. The next
	// upgrade is refused, before the WebSocket exists, with 429 Too Many
	// Requests and Retry-After. Default: 100.
	SessionsPerUser int

	// ClusterSessionsPerUser bounds one user's sessions across the
	// cluster, using the presence record: the upgrade of a session past it
	// is refused with 429 Too Many Requests and Retry-After, like one past
	// SessionsPerUser, and counted in Stats.Refused. The check and the
	// count are one atomic step in the record, so two nodes accepting the
	// user's last place at the same instant cannot both take it. It costs
	// one write to the record before each of the user's upgrades
	// completes. While the record cannot be reached the upgrade is let
	// through (SessionsPerUser still applies), and sessions of a node
	// that was killed still count until they are removed from the record
	// (see the package doc, "Presence"). It needs a backplane that keeps
	// presence and presence on (see Options.NoPresence). Default: no
	// limit.
	ClusterSessionsPerUser int

	// Sessions bounds the sessions of this node in all. The next upgrade
	// is refused with 503 Service Unavailable and Retry-After. Default: no
	// limit (set it below the process's file descriptor limit).
	Sessions int

	// TopicsPerSession bounds the topics one session is in. Session.Join
	// past it returns an error wrapping ErrLimit; a cluster-wide Hub.Join
	// skips that session. Both count in Stats.TopicsRefused. Joining a
	// topic the session is already in is never refused. Default: 1024.
	TopicsPerSession int

	// FramesPerSecond and FrameBurst bound the WebSocket frames a client
	// sends, as a token bucket of each session: every frame counts, data,
	// continuation and control (ping, pong, close) alike, so that ping
	// floods and floods of empty fragments, which the websocket library
	// handles on its own and OnMessage never sees, are bounded as much as
	// messages are. Frames are counted on the connection's bytes as the
	// hub reads them, below the library, so what a client sent while the
	// hub was not reading (OnMessage was busy, say) counts as a burst. A
	// negative value of either turns the frame bucket off. Defaults: 200
	// frames a second, bursts of 400, far above what a chat or game client
	// sends (60 messages a second and pings are never delayed).
	FramesPerSecond float64
	FrameBurst      int

	// BytesPerSecond and ByteBurst bound the bytes a client sends, frame
	// headers included, as a token bucket of each session, charged as the
	// hub reads them. ByteBurst must be at least Options.ReadLimit. A
	// negative value of either turns the byte bucket off. Defaults: 1 MiB a
	// second, bursts of 4 MiB (or ReadLimit plus 14 bytes of header, if
	// larger).
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
	// well-behaved client never notices; a flooder only floods itself:
	// its messages reach OnMessage, and its pings are answered, no faster
	// than its limits allow. Every delay is counted in Stats.RateDelayed.
	// A session that sends its close frame, or ends, stops waiting.
	RateDelay RatePolicy = iota
	// RateClose closes the client with status 1008 (policy violation) and
	// reason "rate limit exceeded", after what is queued for it, counted
	// in Stats.RateClosed; OnDisconnect's error wraps ErrRateLimit. From
	// the first frame past the limits on, nothing the client sends reaches
	// OnMessage, and until the close frame goes out the client is delayed
	// as under RateDelay (not counted); then it is read freely, so that
	// its answer to the close completes the handshake.
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
	case math.IsNaN(l.FramesPerSecond) || math.IsNaN(l.BytesPerSecond):
		return l, fmt.Errorf("%w: Limits.FramesPerSecond or BytesPerSecond is NaN", ErrInvalidOptions)
	case l.RatePolicy != RateDelay && l.RatePolicy != RateClose:
		return l, fmt.Errorf("%w: Limits.RatePolicy %d", ErrInvalidOptions, l.RatePolicy)
	case l.ByteBurst > 0 && l.BytesPerSecond > 0 && int64(l.ByteBurst) < readLimit:
		return l, fmt.Errorf("%w: Limits.ByteBurst %d < ReadLimit %d", ErrInvalidOptions, l.ByteBurst, readLimit)
	case l.FrameBurst > 1<<30 || l.ByteBurst > 1<<40:
		return l, fmt.Errorf("%w: Limits.FrameBurst %d or ByteBurst %d is too large", ErrInvalidOptions, l.FrameBurst, l.ByteBurst)
	case l.RetryAfter < 0:
		return l, fmt.Errorf("%w: Limits.RetryAfter %v < 0", ErrInvalidOptions, l.RetryAfter)
	}
	return l, nil
}

// retryAfterSeconds returns RetryAfter as the value of a Retry-After header:
// whole seconds, rounded up, and at least 1.
func (l Limits) retryAfterSeconds() string {
	return strconv.FormatInt(max(1, int64((l.RetryAfter+time.Second-1)/time.Second)), 10)
}
