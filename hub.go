package wshub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/backplane/memory"
	"github.com/wshub/wshub/internal/envelope"
)

// Channel name prefixes on the backplane.
const (
	userPrefix  = "u:"
	topicPrefix = "t:"
	nodePrefix  = "n:"
)

// Hub accepts WebSocket connections as an http.Handler and delivers messages
// to users, topics and sessions anywhere in the cluster. All methods are safe
// for concurrent use.
//
// A hub that never serves a connection is a sender: a worker or an HTTP
// handler that only calls Send, Broadcast, SendSession, Join or Disconnect.
// It subscribes nothing on the backplane (its inbox is subscribed with its
// first session) and needs no NodeID of its own: the default is random.
type Hub struct {
	opts Options
	// throughIdle is how long a session's socket must have taken nothing,
	// and the fan-out must have rested, before the fan-out writes to the
	// socket itself (see Session.enqueueAt); fanoutEnd is when the last
	// fan-out ended (mono).
	throughIdle int64
	fanoutEnd   atomic.Int64
	log         *slog.Logger
	replay      backplane.Log // the backplane, when it keeps logs for resume
	bp          backplane.Backplane
	ownBP       bool
	inbox       string
	interest    *interest
	reg         *registry // the sessions of this node, by ID, user and topic
	pres        *tracker  // this node's presence; nil without
	acks        acks      // acknowledgements this node waits for
	gates       joinGates
	// inboxOnce subscribes the node's inbox with its first session: a hub
	// that never serves (a worker that only sends) subscribes nothing.
	inboxOnce   sync.Once
	inboxWanted atomic.Bool

	// ctx is the hub's lifetime; every session's context derives from it.
	ctx    context.Context
	cancel context.CancelFunc

	// mu guards the hub's lifecycle: closed, drain.on, and flushes.
	mu        sync.RWMutex
	closed    bool
	drain     drainState               // see Drain
	flushes   map[string]chan struct{} // tokens of flush markers in flight
	conns     sync.WaitGroup           // ServeHTTP calls, and the sessions they started
	closeOnce sync.Once
	closeErr  error
	seq       atomic.Uint64
	stats     counters
	meters    meters // what Metrics adds to Stats (see meter.go)

	// signer signs what the hub publishes and verifies what it receives,
	// with Options.SigningKeys; nil without keys.
	signer *envelope.Signer
	// forgedLogged is when the hub last logged a forged message, in Unix
	// nanoseconds.
	forgedLogged atomic.Int64
}

type counters struct {
	accepted, received, delivered, dropped, slowClosed atomic.Uint64
	malformed, backplaneDown, backplaneGaps            atomic.Uint64
	writeTimeouts                                      atomic.Uint64
	refused, topicsRefused, rateDelayed, rateClosed    atomic.Uint64
	invalidText, forged                                atomic.Uint64
}

// Stats are counters of one hub since it started.
type Stats struct {
	Sessions       int    // sessions open on this node now
	Accepted       uint64 // sessions accepted in all
	Received       uint64 // messages read from clients
	Delivered      uint64 // messages queued to sessions of this node
	Dropped        uint64 // queued messages dropped by SlowDropOldest
	SlowClosed     uint64 // sessions closed as too slow: a full queue under SlowClose, or WriteTimeouts
	WriteTimeouts  uint64 // of those, sessions whose write made no progress for WriteTimeout
	Malformed      uint64 // backplane messages that did not decode, dropped
	BackplaneDowns uint64 // times the backplane reported its link down
	BackplaneGaps  uint64 // times it came back with messages possibly lost
	Refused        uint64 // upgrades refused by Limits.SessionsPerUser or Limits.Sessions
	TopicsRefused  uint64 // joins refused by Limits.TopicsPerSession
	RateDelayed    uint64 // times a client's reads waited for its rate limits (RateDelay)
	RateClosed     uint64 // sessions closed for exceeding their rate limits (RateClose)
	InvalidText    uint64 // sessions closed with 1007 for a text message that is not UTF-8
	Forged         uint64 // backplane messages dropped for a missing or wrong signature (SigningKeys)
}

// New returns a hub configured by opts, which may be nil for all defaults. It
// starts the hub's backplane delivery; release the hub with Close.
func New(opts *Options) (*Hub, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	h := &Hub{
		opts:        o,
		throughIdle: int64(throughIdle),
		log:         o.Logger.With("node", o.NodeID),
		bp:          o.Backplane,
		inbox:       nodePrefix + o.NodeID,
		flushes:     make(map[string]chan struct{}),
		signer:      envelope.NewSigner(o.SigningKeys),
	}
	if h.bp == nil {
		node, err := memory.NewBus().NewNode(o.NodeID)
		if err != nil {
			return nil, fmt.Errorf("wshub: memory backplane: %w", err)
		}
		h.bp, h.ownBP = node, true
	}
	if n, ok := h.bp.(backplane.Notifier); ok {
		n.Notify(h.onBackplaneEvent)
	}
	h.replay, _ = h.bp.(backplane.Log)
	if err := h.bp.Start(h.receive); err != nil {
		if h.ownBP {
			_ = h.bp.Close()
		}
		return nil, fmt.Errorf("wshub: start backplane: %w", err)
	}
	h.ctx, h.cancel = context.WithCancel(context.Background())
	h.gates.h = h
	h.interest = newInterest(h.bp, h.log, o.SubscribeTimeout)
	h.reg = newRegistry(h.interest, o.Limits, &h.stats.topicsRefused)
	if p, ok := h.bp.(backplane.Presence); ok && !o.NoPresence {
		h.pres = newTracker(p, h.log, o.NodeID, h.onPresence)
		h.reg.pres = h.pres
		h.reg.hold = o.Limits.ClusterSessionsPerUser > 0
	} else if o.Limits.ClusterSessionsPerUser > 0 {
		h.cancel()
		h.interest.close()
		if h.ownBP {
			_ = h.bp.Close()
		}
		return nil, fmt.Errorf("%w: Limits.ClusterSessionsPerUser needs presence: a backplane that implements backplane.Presence, and NoPresence off", ErrInvalidOptions)
	}
	return h, nil
}

// NodeID returns the ID of this node.
func (h *Hub) NodeID() string { return h.opts.NodeID }

// Stats returns the hub's counters.
func (h *Hub) Stats() Stats {
	n := h.reg.len()
	return Stats{
		Sessions:       n,
		Accepted:       h.stats.accepted.Load(),
		Received:       h.stats.received.Load(),
		Delivered:      h.stats.delivered.Load(),
		Dropped:        h.stats.dropped.Load(),
		SlowClosed:     h.stats.slowClosed.Load(),
		WriteTimeouts:  h.stats.writeTimeouts.Load(),
		Malformed:      h.stats.malformed.Load(),
		BackplaneDowns: h.stats.backplaneDown.Load(),
		BackplaneGaps:  h.stats.backplaneGaps.Load(),
		Refused:        h.stats.refused.Load(),
		TopicsRefused:  h.stats.topicsRefused.Load(),
		RateDelayed:    h.stats.rateDelayed.Load(),
		RateClosed:     h.stats.rateClosed.Load(),
		InvalidText:    h.stats.invalidText.Load(),
		Forged:         h.stats.forged.Load(),
	}
}

// publish encodes e once, signed for channel when the hub has SigningKeys,
// and hands it to the backplane.
func (h *Hub) publish(ctx context.Context, channel string, e *envelope.Envelope) error {
	if h.isClosed() {
		return ErrClosed
	}
	stampPublish(e)
	if err := h.bp.Publish(ctx, channel, h.encode(channel, e)); err != nil {
		h.meters.publishErrors.Add(1)
		return fmt.Errorf("wshub: publish to %q: %w", channel, err)
	}
	return nil
}

func (h *Hub) isClosed() bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.closed
}

// Send delivers msg to every session of userID, on every node. It returns
// once the backplane accepted the message; delivery to the sockets is
// asynchronous. A user with no session anywhere is not an error.
func (h *Hub) Send(ctx context.Context, userID string, msg Message) error {
	if err := checkName(userID, ErrInvalidUserID); err != nil {
		return err
	}
	if err := msg.check(h.opts.MaxMessageSize); err != nil {
		return err
	}
	return h.publish(ctx, userPrefix+userID, &envelope.Envelope{
		Op: envelope.OpUser, Flags: flags(msg), Target: userID, Payload: msg.Data,
	})
}

// BroadcastOption changes how Broadcast delivers.
type BroadcastOption func(*broadcastOptions)

type broadcastOptions struct {
	except string
}

// Except leaves the session with the given ID out of a broadcast, for
// example the session that sent the message being relayed. When that
// session is on this node and its client named itself with ClientParam,
// the client is also left out when it resumes on a new session.
func Except(sessionID string) BroadcastOption {
	return func(o *broadcastOptions) { o.except = sessionID }
}

// Broadcast delivers msg to every session in topic, on every node. The
// message is encoded once and its bytes are shared by every recipient.
func (h *Hub) Broadcast(ctx context.Context, topic string, msg Message, opts ...BroadcastOption) error {
	if err := checkName(topic, ErrInvalidTopic); err != nil {
		return err
	}
	if err := msg.check(h.opts.MaxMessageSize); err != nil {
		return err
	}
	var bo broadcastOptions
	for _, o := range opts {
		o(&bo)
	}
	var client string
	if bo.except != "" {
		// The client behind a local session is left out of the
		// broadcast when it resumes on a new session, too.
		if s := h.reg.session(bo.except); s != nil {
			client = s.framing.client
		}
	}
	return h.publish(ctx, topicPrefix+topic, &envelope.Envelope{
		Op: envelope.OpTopic, Flags: flags(msg), Target: topic, Arg: bo.except, Client: client, Payload: msg.Data,
	})
}

// SendSession delivers msg to exactly one session, on whichever node holds
// it: the way to answer the session a request came from. A session that has
// ended is not an error; the message is dropped.
func (h *Hub) SendSession(ctx context.Context, sessionID string, msg Message) error {
	node, ok := nodeOf(sessionID)
	if !ok || len(sessionID) > 2*MaxNameLength {
		return fmt.Errorf("%w: %q", ErrInvalidSessionID, sessionID)
	}
	if err := msg.check(h.opts.MaxMessageSize); err != nil {
		return err
	}
	return h.publish(ctx, nodePrefix+node, &envelope.Envelope{
		Op: envelope.OpSession, Flags: flags(msg), Target: sessionID, Payload: msg.Data,
	})
}

// Join adds every session that userID has now, on every node, to topic. It
// returns once the request is on the backplane; each node applies it when it
// arrives. A node holds back what arrives for the user after the Join
// until its subscription to topic is confirmed, so a user who received a
// message sent after Join also receives the topic's later broadcasts.
// Sessions the user opens later are not joined: join those in
// Options.OnConnect. With Acknowledged, Join returns only once every node
// holding the user has applied it.
func (h *Hub) Join(ctx context.Context, userID, topic string, opts ...JoinOption) error {
	return h.control(ctx, envelope.OpJoin, userID, topic, opts)
}

// Leave removes every session of userID, on every node, from topic. Like
// Join, it is applied by each node when the request arrives, and with
// Acknowledged it returns once every node holding the user has applied it.
func (h *Hub) Leave(ctx context.Context, userID, topic string, opts ...JoinOption) error {
	return h.control(ctx, envelope.OpLeave, userID, topic, opts)
}

func (h *Hub) control(ctx context.Context, op envelope.Op, userID, topic string, opts []JoinOption) error {
	if err := checkName(userID, ErrInvalidUserID); err != nil {
		return err
	}
	if err := checkName(topic, ErrInvalidTopic); err != nil {
		return err
	}
	var jo joinOptions
	for _, o := range opts {
		o(&jo)
	}
	if jo.ack {
		if _, err := h.presence(); err != nil {
			return err
		}
	}
	// On the user's channel, the request is ordered with what is sent to
	// the user, and reaches nodes the presence record does not list yet.
	if err := h.publish(ctx, userPrefix+userID, &envelope.Envelope{Op: op, Target: userID, Arg: topic}); err != nil {
		return err
	}
	if !jo.ack {
		return nil
	}
	ackOp := envelope.OpJoinAck
	if op == envelope.OpLeave {
		ackOp = envelope.OpLeaveAck
	}
	return h.controlAck(ctx, ackOp, userID, topic)
}

// Disconnect closes every session of userID, on every node, with the given
// close status and reason, after each has sent what it had queued.
func (h *Hub) Disconnect(ctx context.Context, userID string, code StatusCode, reason string) error {
	if err := checkName(userID, ErrInvalidUserID); err != nil {
		return err
	}
	if !validStatus(code, reason) {
		return fmt.Errorf("%w: %d %q", ErrInvalidCloseStatus, code, reason)
	}
	return h.publish(ctx, userPrefix+userID, &envelope.Envelope{
		Op: envelope.OpDisconnect, Target: userID, Arg: reason, Code: uint64(code),
	})
}

// flushInbox publishes a marker to this node's own inbox and waits for it, or
// for ctx or WriteTimeout, so that what this node published before Close and
// the backplane still holds reaches local sessions before they close. It is
// exact on backplanes that deliver a node's channels in one order (memory,
// one Redis in either mode, outside a Streams catch-up) and best effort on
// others (a Redis Cluster).
func (h *Hub) flushInbox(ctx context.Context) {
	token := strconv.FormatUint(h.seq.Add(1), 36)
	arrived := make(chan struct{})
	h.mu.Lock()
	h.flushes[token] = arrived
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.flushes, token)
		h.mu.Unlock()
	}()
	ctx, cancel := context.WithTimeout(ctx, h.opts.WriteTimeout)
	defer cancel()
	if !h.inboxWanted.Load() || h.interest.ready(h.inbox).wait(ctx) != nil {
		return
	}
	if c, ok := h.bp.(backplane.Checker); ok && c.Health() != nil {
		return // the marker could not come back: nothing to wait for
	}
	e := envelope.Envelope{Op: envelope.OpFlush, Target: token}
	if err := h.bp.Publish(ctx, h.inbox, h.encode(h.inbox, &e)); err != nil {
		h.log.Debug("wshub: flush before close failed", "err", err)
		return
	}
	select {
	case <-arrived:
	case <-ctx.Done():
	}
}

func (h *Hub) onBackplaneEvent(e backplane.Event) {
	defer func() {
		if v := recover(); v != nil {
			h.log.Error("wshub: panic in OnBackplaneEvent", "panic", v, "stack", string(debug.Stack()))
		}
	}()
	// These are the lines that log a change of the backplane's link: a
	// backplane logs its own at Debug (see backplane.Notifier), so each
	// change is logged once, here, with the node.
	switch e.Kind {
	case backplane.EventDown:
		h.stats.backplaneDown.Add(1)
		h.log.Warn("wshub: backplane down", "err", e.Err)
	case backplane.EventRestored:
		level := slog.LevelInfo // nothing was lost
		if e.Gap {
			h.stats.backplaneGaps.Add(1)
			level = slog.LevelWarn
		}
		h.log.Log(context.Background(), level, "wshub: backplane restored", "gap", e.Gap)
	}
	if h.opts.OnBackplaneEvent != nil {
		h.opts.OnBackplaneEvent(e)
	}
}

// Health reports whether the hub can deliver across the cluster now, for a
// readiness check. It returns ErrClosed once the hub is closing, the
// backplane's error when the backplane implements backplane.Checker and is
// not delivering (wrapping backplane.ErrUnavailable), and nil otherwise. A
// hub that has never served a session holds no subscription, so on a
// backplane that checks its subscription connections (a Redis Cluster opens
// one per shard in use) it may report nil before it has anything to check.
func (h *Hub) Health() error {
	if h.isClosed() {
		return ErrClosed
	}
	if c, ok := h.bp.(backplane.Checker); ok {
		if err := c.Health(); err != nil {
			return fmt.Errorf("wshub: backplane: %w", err)
		}
	}
	return nil
}

// Close shuts the hub down gracefully: it stops accepting upgrades (503),
// lets every session send what it has queued, closes each with status 1001
// (going away) and waits for every goroutine the hub started. Before a
// restart, call Drain first: it moves the clients to other nodes in
// batches, and Close then finds nothing left to close. When ctx ends
// first, the remaining connections are closed at once and Close returns an
// error wrapping ctx.Err() after the goroutines have ended. A backplane given
// in Options is not closed; the hub's channels on it are unsubscribed, unless
// ctx has already ended. Calling Close again returns the
// first call's result.
//
// What this node published just before Close and the backplane still
// carries reaches its local sessions before they close: Close sends a marker
// through the node's own inbox and waits for it (within WriteTimeout). That
// is exact on the memory backplane and on one Redis in either mode, which
// deliver a node's channels in one order (except while a Streams node
// catches up after an outage), and best effort on a Redis Cluster, whose
// shards do not.
//
// http.Server.Shutdown does not wait for hijacked connections such as
// WebSockets: call Hub.Close first, then Shutdown, then close a backplane you
// opened. Close waits for every session, so it must not be called from a
// hook (OnConnect, OnMessage, OnDisconnect): from there, call it in a new
// goroutine.
func (h *Hub) Close(ctx context.Context) error {
	h.closeOnce.Do(func() { h.closeErr = h.shutdown(ctx) })
	return h.closeErr
}

func (h *Hub) shutdown(ctx context.Context) error {
	h.mu.Lock()
	h.closed = true
	h.mu.Unlock()
	// The registry refuses new sessions from now on but keeps its own,
	// which the flush must still reach.
	sessions := h.reg.close()
	h.flushInbox(ctx)
	for _, s := range sessions {
		_ = s.Close(StatusGoingAway, "server shutting down")
	}

	done := make(chan struct{})
	go func() { h.conns.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = fmt.Errorf("wshub: close: %w", ctx.Err())
		h.cancel() // ends every session's reads and writes at once
		<-done
	}
	h.cancel()
	h.acks.answering.Wait() // bounded: h.ctx has ended
	if h.pres != nil {
		h.pres.close(ctx) // writes the removal of this node's sessions
	}
	h.interest.close()
	h.gates.close()

	if h.ownBP {
		return errors.Join(err, h.bp.Close())
	}
	// Leave the given backplane as it was found, within the caller's time.
	if chs := h.interest.subscribed(); len(chs) > 0 && ctx.Err() == nil {
		uctx, cancel := context.WithTimeout(ctx, h.opts.WriteTimeout)
		defer cancel()
		if uerr := h.bp.Unsubscribe(uctx, chs...); uerr != nil {
			err = errors.Join(err, fmt.Errorf("wshub: unsubscribe: %w", uerr))
		}
	}
	return err
}
