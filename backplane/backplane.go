// Package backplane defines how wshub nodes move messages between each other.
//
// A Backplane moves opaque bytes on named channels between the nodes of a
// cluster. It knows nothing about users, topics or sessions: the hub maps those
// to channels and encodes its own envelopes. A backend implements the small
// Backplane interface and may implement optional interfaces (such as Notifier)
// that the hub discovers by type assertion.
//
// Every backend must pass the conformance suite in package backplanetest.
//
// Backends register a URL scheme with Register so that applications can pick
// one from configuration with Open:
//
//	bp, err := backplane.Open(ctx, "memory://")
//
// What does not belong in a URL, such as the logger, is given to Open as
// options:
//
//	bp, err := backplane.Open(ctx, cfg.BackplaneURL, backplane.WithLogger(logger))
package backplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sort"
	"sync"
)

// Errors returned by backplanes. Backends wrap them with %w so that callers can
// test for them with errors.Is.
var (
	// ErrClosed is returned by every call made after Close.
	ErrClosed = errors.New("backplane: closed")
	// ErrUnavailable means the backplane cannot currently reach the rest of
	// the cluster (the link to its server is down, or the node is partitioned).
	ErrUnavailable = errors.New("backplane: unavailable")
	// ErrInvalidChannel is returned for an empty channel name, or one
	// longer than a backend carries.
	ErrInvalidChannel = errors.New("backplane: invalid channel")
	// ErrStarted is returned by a second call to Start.
	ErrStarted = errors.New("backplane: already started")
	// ErrUnknownScheme is returned by Open for a URL whose scheme no backend
	// registered.
	ErrUnknownScheme = errors.New("backplane: unknown scheme")
	// ErrNotRetained is returned by Log.Read when messages after the given
	// offset may already have been dropped by retention, or lost with the
	// log: the reader cannot be brought up to date from the log and must
	// reload its state.
	ErrNotRetained = errors.New("backplane: not retained")
	// ErrInvalidOffset is returned by Log.Read for an offset that the
	// backplane did not hand out.
	ErrInvalidOffset = errors.New("backplane: invalid offset")
)

// Message is one message a backplane delivers to its node.
type Message struct {
	// Channel is the channel it was published on.
	Channel string
	// Offset is its place in the channel's log, for a backplane that keeps
	// one (see Log), and empty otherwise.
	Offset string
	// Payload is what was published, byte for byte. It must not be
	// modified; the handler may keep it.
	Payload []byte
}

// Handler receives the messages that arrive on the channels a node subscribed to.
//
// A backplane calls its handler for one channel at a time in the order the
// messages of each publisher were published; calls for different channels may
// be concurrent. The handler must not block, nor publish: it should hand the
// message off and return.
type Handler func(Message)

// Backplane is one node's connection to the cluster's message bus.
//
// A message published on a channel reaches every node that is subscribed to
// that channel when it is published, including the publishing node itself.
// Subscriptions are a set: subscribing to a channel twice and unsubscribing
// once leaves it unsubscribed. All methods are safe for concurrent use.
type Backplane interface {
	// Start sets the handler that receives every message for this node and
	// begins delivery. It is called once, normally before Subscribe; a
	// second call returns an error wrapping ErrStarted, and a nil handler is
	// an error.
	Start(h Handler) error

	// Publish sends payload to every node subscribed to channel. The backplane
	// may keep payload, so the caller must not modify it afterwards. Publish
	// returns an error wrapping ErrUnavailable when the message cannot be
	// handed to the bus, and ctx.Err() when ctx is done before the message
	// was handed to the bus.
	Publish(ctx context.Context, channel string, payload []byte) error

	// Subscribe adds channels to this node's interest. When it returns nil,
	// every message published to those channels afterwards is delivered to
	// the handler.
	Subscribe(ctx context.Context, channels ...string) error

	// Unsubscribe removes channels from this node's interest. Messages
	// published to them after it returns are not delivered. Unsubscribing a
	// channel the node does not hold is not an error.
	Unsubscribe(ctx context.Context, channels ...string) error

	// Close stops delivery and releases what the backplane created. The
	// handler is not called after Close returns. Calling Close again returns
	// nil; every other method returns an error wrapping ErrClosed after Close.
	Close() error
}

// EventKind says what happened to a node's link to the bus.
type EventKind int

// The kinds of Event.
const (
	// EventDown means the node stopped receiving from the bus. Messages
	// published while it is down may not reach it.
	EventDown EventKind = iota + 1
	// EventRestored means the node receives again. Gap reports whether
	// messages may have been lost while it was down.
	EventRestored
)

// String returns "down" or "restored".
func (k EventKind) String() string {
	switch k {
	case EventDown:
		return "down"
	case EventRestored:
		return "restored"
	default:
		return fmt.Sprintf("EventKind(%d)", int(k))
	}
}

// Event reports a change in a node's link to the bus.
type Event struct {
	Kind EventKind
	// Err is the cause of an EventDown, when known.
	Err error
	// Gap is true on EventRestored when messages published while the node was
	// down may not have been delivered to it.
	Gap bool
}

// Notifier is implemented by backplanes that report changes of their link to
// the bus. The hub calls Notify once, before Start. fn must not block, and is
// not called after Close returns.
//
// The hub logs every Event it receives at Warn level (a restore without a
// gap at Info), with its node attribute, so that each change is logged
// once: a backend that logs the changes it reports logs them at Debug.
type Notifier interface {
	Notify(fn func(Event))
}

// Opener opens a backplane from a URL whose scheme it was registered for,
// with the options given to Open.
type Opener func(ctx context.Context, u *url.URL, o OpenOptions) (Backplane, error)

// OpenOptions are what Open hands an Opener besides the URL: the settings
// that do not belong in a URL. Open sets every field, so an Opener sees no
// zero value; a caller of an Opener's function outside Open may leave them
// zero, and the backend then applies the default given here.
type OpenOptions struct {
	// Logger receives the backplane's logs. Default slog.Default().
	Logger *slog.Logger
}

// An OpenOption sets one of the OpenOptions that Open hands the backend.
type OpenOption func(*OpenOptions)

// WithLogger makes l receive the logs of the backplane that Open opens, so
// that one logger reaches the hub and its backplane. A nil l selects the
// default, slog.Default(). The hub adds its node attribute to what it logs
// itself; add it to l (l.With("node", id)) for the backplane's lines too.
func WithLogger(l *slog.Logger) OpenOption {
	return func(o *OpenOptions) { o.Logger = l }
}

// registry is the only package-level state: the table of backends, written by
// their init functions.
var registry = struct {
	sync.RWMutex
	m map[string]Opener
}{m: make(map[string]Opener)}

// Register makes a backend available to Open under a URL scheme. It is meant
// to be called from a backend's init function and panics if the scheme is
// empty, the opener is nil or the scheme is already registered.
func Register(scheme string, open Opener) {
	if scheme == "" || open == nil {
		panic("backplane: Register with empty scheme or nil opener")
	}
	registry.Lock()
	defer registry.Unlock()
	if _, dup := registry.m[scheme]; dup {
		panic("backplane: Register called twice for scheme " + scheme)
	}
	registry.m[scheme] = open
}

// Schemes returns the registered URL schemes, sorted.
func Schemes() []string {
	registry.RLock()
	defer registry.RUnlock()
	s := make([]string, 0, len(registry.m))
	for k := range registry.m {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

// Open opens a backplane from a URL such as "memory://". The backend for the
// scheme must have been registered, usually by importing its package:
//
//	import _ "github.com/wshub/wshub/backplane/memory"
//
// opts set what does not belong in the URL (WithLogger). The caller owns
// the returned backplane and must Close it.
func Open(ctx context.Context, rawURL string, opts ...OpenOption) (Backplane, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("backplane: parse url: %w", err)
	}
	registry.RLock()
	open := registry.m[u.Scheme]
	registry.RUnlock()
	if open == nil {
		return nil, fmt.Errorf("%w %q (registered: %v)", ErrUnknownScheme, u.Scheme, Schemes())
	}
	var o OpenOptions
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	bp, err := open(ctx, u, o)
	if err != nil {
		return nil, fmt.Errorf("backplane: open %s: %w", u.Scheme, err)
	}
	return bp, nil
}

// Checker is implemented by backplanes that can tell whether they are
// delivering now. Health returns nil when they are, and otherwise an error
// wrapping ErrUnavailable (or ErrClosed) that says why.
type Checker interface {
	Health() error
}

// SplitOffset splits an offset into its epoch and its position (see Log).
// An offset without an epoch has an empty one.
func SplitOffset(offset string) (epoch, position string) {
	for i := 0; i < len(offset); i++ {
		if offset[i] == ':' {
			return offset[:i], offset[i+1:]
		}
	}
	return "", offset
}

// OffsetAfter reports whether offset a comes after offset b in their
// channel's log: a has another epoch (a log that was recreated starts
// again, after everything of the older one), or the same epoch and a
// later position.
func OffsetAfter(a, b string) bool {
	ea, pa := SplitOffset(a)
	eb, pb := SplitOffset(b)
	return ea != eb || pa > pb
}

// Entry is a message read back from a channel's log.
type Entry struct {
	Offset  string
	Payload []byte
}

// Log is implemented by backplanes that keep a bounded log of every
// channel, so that a reader that fell behind (a client that reconnects)
// can be given exactly what it missed.
//
// An offset is "<epoch>:<position>". The epoch names one life of the
// channel's log: it changes whenever the log is recreated after it was
// lost (a server restarted without persistence, a key deleted or evicted, a
// failover to a server without the data), so that a position in a lost log
// is never mistaken for one in its successor. Positions of one epoch
// compare in publish order as strings. A backplane whose logs cannot be
// lost may use one epoch for ever.
//
// Every message a Log delivers to its handler carries its offset
// (Message.Offset).
type Log interface {
	// Read returns up to limit messages of channel published after offset,
	// oldest first. An empty offset reads from the oldest message
	// retained. It returns an error wrapping ErrNotRetained when messages
	// after offset may have been dropped by retention or lost with the log
	// (offset is of another epoch than the log's), and one wrapping
	// ErrInvalidOffset for an offset the backplane did not hand out,
	// including one beyond the end of the log. Fewer than limit messages
	// means the reader is up to date.
	Read(ctx context.Context, channel, offset string, limit int) ([]Entry, error)
}
