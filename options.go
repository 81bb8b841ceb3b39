package wshub

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"fmt"
	"log/slog"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/wshub/wshub/backplane"
)

// MaxNameLength is the longest user ID, topic or node ID the hub accepts, in
// bytes.
const MaxNameLength = 256

// SlowPolicy says what a session does when its send queue is full.
type SlowPolicy int

// The slow-consumer policies.
const (
	// SlowClose closes the session with status 1013 (try again later). The
	// client can reconnect and reload state; nothing is silently lost.
	SlowClose SlowPolicy = iota
	// SlowDropOldest drops the oldest queued messages to make room, and
	// counts them in Stats.Dropped.
	SlowDropOldest
)

// Options configures a Hub. The zero value of every field selects the default
// given in its comment; New copies the struct, so later changes have no effect.
type Options struct {
	// Backplane connects this hub to the other nodes of the cluster. Nil
	// means a private in-memory backplane: a single-node hub. A hub uses its
	// backplane alone (one hub per backplane node). The hub never closes a
	// backplane it was given.
	Backplane backplane.Backplane

	// NodeID names this node in the cluster; it must be unique within it and
	// must not contain '.'. Default: 16 random characters.
	NodeID string

	// Authenticate maps an upgrade request to a user ID. A non-nil error
	// answers 401 Unauthorized before any WebSocket exists. An empty user ID
	// is an anonymous session: it can join topics and be addressed by session
	// ID, but not by Send. Default: every session is anonymous.
	Authenticate func(r *http.Request) (userID string, err error)

	// AllowedOrigins lists host patterns (path.Match syntax, such as
	// "*.example.com") whose cross-origin upgrades are accepted. Default:
	// same-origin only; other origins get 403 Forbidden.
	AllowedOrigins []string

	// OnConnect is called for each new session just before the WebSocket
	// handshake completes, so that what it sets up (topics joined with
	// s.Join, messages queued with s.Send) is in place when the client sees
	// the connection open. A non-nil error closes the session, once open,
	// with status 1008 (policy violation) and the error's text, cut to 123
	// bytes, as reason; to
	// close with another status, call s.Close and return nil. Every session
	// OnConnect saw is later reported to OnDisconnect.
	OnConnect func(ctx context.Context, s *Session) error

	// OnMessage is called for each message the client sends, one at a time
	// per session, in order; the next message is read after it returns. ctx
	// is the session's context. m.Data is the caller's to keep. A text
	// message that is not valid UTF-8 never reaches it: the session is
	// closed with 1007 instead (see ErrInvalidText). Nor does what a
	// client sends once it is closed for breaking its rate limits (see
	// RateClose).
	OnMessage func(ctx context.Context, s *Session, m Message)

	// OnDisconnect is called once when a session has ended and its
	// goroutines are done. err says why (see CloseStatus).
	OnDisconnect func(s *Session, err error)

	// OnBackplaneEvent is called when a backplane that implements
	// backplane.Notifier reports that the link to the bus went down or came
	// back, and whether messages may have been lost. It must not block,
	// nor publish: it may run on the backplane's delivery goroutine.
	OnBackplaneEvent func(e backplane.Event)

	// ReadLimit is the largest message a client may send, in bytes; a larger
	// one closes the session with status 1009. Default: 64 KiB.
	ReadLimit int64

	// MaxMessageSize is the largest message the hub sends, in bytes; larger
	// ones are refused with ErrMessageTooLarge. Default: 1 MiB.
	MaxMessageSize int

	// SendQueueLen bounds the number of messages in each session's queue
	// of unsent messages. Default: SendQueueBytes/64, as many empty
	// messages as SendQueueBytes holds, so that the byte bound is the one
	// that applies.
	SendQueueLen int

	// SendQueueBytes bounds the bytes held in each session's queue, each
	// message counting its length plus 64 bytes for its slot and framing;
	// it must be at least MaxMessageSize. An empty queue always takes one
	// message. A burst of N messages of S bytes that a client does not
	// read meanwhile fits when N × (S + 64) ≤ SendQueueBytes: with the
	// default, 32,768 messages of 64 bytes or 3,855 of 1 KiB; a client
	// that reads drains the queue while the burst arrives. Default: 4 MiB,
	// or MaxMessageSize if that is larger.
	//
	// A session holds at most this much queued, plus the batch its writer
	// is sending (up to 256 KiB, or one larger message), the 64 KiB it
	// gathers into one write, and the socket's kernel send buffer (see
	// SocketWriteBuffer): about 4.5 MiB with the defaults. A broadcast's
	// bytes are shared by all its recipients, so sessions of one topic hold
	// them once.
	SendQueueBytes int

	// SlowPolicy applies when a session's queue is full. Default: SlowClose.
	// A client that stops reading fills its socket first, then its queue:
	// under SlowClose the hub then closes it with 1013, a close frame such
	// a client never reads, and the connection is cut once WriteTimeout
	// passes without progress, so the client sees it end abnormally (1006);
	// under SlowDropOldest only the WriteTimeout cut ends it.
	// Under SlowDropOldest a client that reads R bytes a second receives
	// what is left of the queue up to about SendQueueBytes/R seconds late.
	SlowPolicy SlowPolicy

	// SocketWriteBuffer is the kernel send buffer of each session's TCP
	// socket, in bytes (net.TCPConn.SetWriteBuffer; Linux reserves twice
	// the value for its bookkeeping). Bytes the kernel holds can no longer
	// be dropped by SlowDropOldest, so a small buffer keeps a slow client's
	// data fresh and its memory bounded (the kernel would otherwise grow
	// the buffer to megabytes). It also bounds how fast one client can be
	// sent to: about twice the value per round trip, 1.3 MB/s at 100 ms
	// with the default. The kernel makes room in steps of up to about
	// twice the value, so a client that reads less than that per
	// WriteTimeout (about 13 KB/s with the defaults) may be taken for one
	// that stalled: raise WriteTimeout for slower clients. Negative leaves
	// the system's default and its autotuning; sockets that are not TCP
	// are left alone. Default: 64 KiB.
	SocketWriteBuffer int

	// PingInterval is how often an idle-or-not session is pinged; a peer
	// that does not answer is disconnected (see WriteTimeout). Negative
	// disables pings. Default: 30s.
	PingInterval time.Duration

	// WriteTimeout is how long a write to a socket may make no progress,
	// and how long a ping may wait for its pong while the socket takes no
	// bytes; a client that stalls for longer is disconnected. Progress is
	// measured in pieces of 16 KiB, so a client that reads slowly but
	// steadily is not taken for a stalled one. A stalled write closes the
	// session at once, without a close frame, and counts it in
	// Stats.SlowClosed and Stats.WriteTimeouts; OnDisconnect's error wraps
	// ErrSlowClient. Default: 10s.
	WriteTimeout time.Duration

	// SubscribeTimeout bounds how long an upgrade waits for the backplane to
	// confirm this node's interest in the user's channel; past it the upgrade
	// answers 503. Default: 10s.
	SubscribeTimeout time.Duration

	// Limits bound what one client, one user and the whole node may take.
	// See Limits for each bound and its default.
	Limits Limits

	// SigningKeys, when set, make the hub sign every envelope it
	// publishes (HMAC-SHA256 with the first key, over the channel and the
	// envelope) and drop, count (Stats.Forged) and log (at Warn, at most
	// once a second) what arrives from the backplane, or is read from its
	// log for a resume, without a valid signature by any of the keys, so
	// that access to the shared Redis alone cannot steer delivery. A
	// signed message cannot be moved to another channel, but can be
	// published again on its own: replays are not detected (see the
	// package doc's trust model). Every node of a cluster must have the
	// same keys; a hub without keys counts signed envelopes in
	// Stats.Malformed. Rotate by adding the new key last everywhere, then
	// moving it first, then removing the old one: every key is tried on
	// each message received, so each extra key costs one more HMAC. Each
	// key must be at least 16 bytes; the hub keeps its own copy. Default:
	// none (envelopes are not signed; restrict Redis access with ACLs
	// instead, see the README's production checklist).
	SigningKeys [][]byte

	// NoPresence turns off this node's part of the presence record: its
	// sessions are then not counted by Online, TopicCount and
	// TopicMembers anywhere (those still read what other nodes write).
	// Presence is on by default whenever the backplane keeps it (it
	// implements backplane.Presence, as memory and Redis do): each
	// connect, disconnect, join and leave of a user's session is then
	// written to it in batches (see the package doc, "Presence").
	NoPresence bool

	// OnPresence, when set, is called when a user comes online or goes
	// offline cluster-wide, and when a user first joins a topic or its
	// last session leaves it. Each change is reported once, on the node
	// whose write made it (or that removed a dead node's entries), in the
	// order that node saw them, from one goroutine of the hub's own:
	// presence writes and upgrades never wait for it, and a slow hook only
	// delays the events after it. Off by default.
	OnPresence func(PresenceEvent)

	// PresenceMessage, when set, is asked for a message to broadcast to
	// the topic's members on each PresenceJoined and PresenceLeft event
	// (ok false sends nothing), so that clients keep a live member list
	// without polling: the hub adds nothing to the wire itself. Like
	// OnPresence, it runs on one node per change. The joining user's own
	// sessions may not receive the message of their join (it can go out
	// before their subscription is confirmed): read TopicMembers once
	// Session.Join returns for the list to start from. Off by default.
	PresenceMessage func(PresenceEvent) (msg Message, ok bool)

	// Logger receives the hub's logs. Default: slog.Default(). Routine events
	// are logged at Debug level.
	Logger *slog.Logger
}

func (o *Options) withDefaults() (Options, error) {
	var c Options
	if o != nil {
		c = *o
		c.AllowedOrigins = append([]string(nil), o.AllowedOrigins...)
	}
	if c.NodeID == "" {
		var b [10]byte
		_, _ = rand.Read(b[:])
		c.NodeID = strings.ToLower(base32.StdEncoding.EncodeToString(b[:]))
	}
	for _, p := range c.AllowedOrigins {
		if _, err := path.Match(p, ""); err != nil {
			return c, fmt.Errorf("%w: AllowedOrigins pattern %q: %w", ErrInvalidOptions, p, err)
		}
	}
	if len(c.NodeID) > MaxNameLength || strings.Contains(c.NodeID, ".") {
		return c, fmt.Errorf("%w: NodeID %q: at most %d bytes, no '.'", ErrInvalidOptions, c.NodeID, MaxNameLength)
	}
	setDefault(&c.ReadLimit, 64<<10)
	c.SigningKeys = append([][]byte(nil), c.SigningKeys...)
	for i, k := range c.SigningKeys {
		if len(k) < 16 {
			return c, fmt.Errorf("%w: SigningKeys[%d] is %d bytes, at least 16", ErrInvalidOptions, i, len(k))
		}
	}
	var err error
	if c.Limits, err = c.Limits.withDefaults(c.ReadLimit); err != nil {
		return c, err
	}
	setDefault(&c.MaxMessageSize, 1<<20)
	setDefault(&c.SendQueueBytes, max(4<<20, c.MaxMessageSize))
	setDefault(&c.SendQueueLen, max(1, c.SendQueueBytes/queuedOverhead))
	setDefault(&c.SocketWriteBuffer, 64<<10)
	setDefault(&c.PingInterval, 30*time.Second)
	setDefault(&c.WriteTimeout, 10*time.Second)
	setDefault(&c.SubscribeTimeout, 10*time.Second)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	switch {
	case c.ReadLimit < 0:
		return c, fmt.Errorf("%w: ReadLimit %d < 0", ErrInvalidOptions, c.ReadLimit)
	case c.MaxMessageSize < 0:
		return c, fmt.Errorf("%w: MaxMessageSize %d < 0", ErrInvalidOptions, c.MaxMessageSize)
	case c.SendQueueLen < 0:
		return c, fmt.Errorf("%w: SendQueueLen %d < 0", ErrInvalidOptions, c.SendQueueLen)
	case c.SendQueueBytes < c.MaxMessageSize:
		return c, fmt.Errorf("%w: SendQueueBytes %d < MaxMessageSize %d", ErrInvalidOptions, c.SendQueueBytes, c.MaxMessageSize)
	case c.SlowPolicy != SlowClose && c.SlowPolicy != SlowDropOldest:
		return c, fmt.Errorf("%w: SlowPolicy %d", ErrInvalidOptions, c.SlowPolicy)
	case c.WriteTimeout < 0:
		return c, fmt.Errorf("%w: WriteTimeout %v < 0", ErrInvalidOptions, c.WriteTimeout)
	case c.SubscribeTimeout < 0:
		return c, fmt.Errorf("%w: SubscribeTimeout %v < 0", ErrInvalidOptions, c.SubscribeTimeout)
	}
	return c, nil
}

func setDefault[T int | int64 | time.Duration](v *T, def T) {
	if *v == 0 {
		*v = def
	}
}
