package wshub

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"github.com/coder/websocket"

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
type Hub struct {
	opts     Options
	log      *slog.Logger
	replay   backplane.Log // the backplane, when it keeps logs for resume
	bp       backplane.Backplane
	ownBP    bool
	inbox    string
	interest *interest
	gates    joinGates

	// ctx is the hub's lifetime; every session's context derives from it.
	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.RWMutex
	closed   bool
	sessions map[string]*Session
	users    map[string]map[*Session]struct{}
	topics   map[string]map[*Session]struct{}

	flushes   map[string]chan struct{} // tokens of flush markers in flight, under mu
	conns     sync.WaitGroup           // ServeHTTP calls that own a session
	closeOnce sync.Once
	closeErr  error
	seq       atomic.Uint64
	stats     counters
}

type counters struct {
	accepted, received, delivered, dropped, slowClosed atomic.Uint64
	malformed, backplaneDown, backplaneGaps            atomic.Uint64
	writeTimeouts                                      atomic.Uint64
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
}

// New returns a hub configured by opts, which may be nil for all defaults. It
// starts the hub's backplane delivery; release the hub with Close.
func New(opts *Options) (*Hub, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	h := &Hub{
		opts:     o,
		log:      o.Logger.With("node", o.NodeID),
		bp:       o.Backplane,
		inbox:    nodePrefix + o.NodeID,
		sessions: make(map[string]*Session),
		users:    make(map[string]map[*Session]struct{}),
		topics:   make(map[string]map[*Session]struct{}),
		flushes:  make(map[string]chan struct{}),
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
	h.interest.acquire(h.inbox)
	return h, nil
}

// NodeID returns the ID of this node.
func (h *Hub) NodeID() string { return h.opts.NodeID }

// Stats returns the hub's counters.
func (h *Hub) Stats() Stats {
	h.mu.RLock()
	n := len(h.sessions)
	h.mu.RUnlock()
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
	}
}

// ServeHTTP authenticates the request, upgrades it to a WebSocket and serves
// the session until it ends. Before any upgrade it answers 401 when
// Options.Authenticate fails, 403 for a refused origin, 400 for resume
// parameters it cannot use (see SinceParam, ClientParam), 503 once the hub is
// closing or when the backplane cannot confirm the user's subscription in
// time, 500 when Authenticate returns an over-long user ID or OnConnect
// panics, 501 when the ResponseWriter cannot hijack the connection, and what
// the websocket library answers to a request that is not a valid handshake
// (400, 405, 426).
func (h *Hub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		http.Error(w, "wshub: shutting down", http.StatusServiceUnavailable)
		return
	}
	h.conns.Add(1)
	h.mu.Unlock()
	defer h.conns.Done()

	var userID string
	if h.opts.Authenticate != nil {
		var err error
		userID, err = h.opts.Authenticate(r)
		if err != nil {
			h.log.Debug("wshub: authentication failed", "remote", r.RemoteAddr, "err", err)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		if len(userID) > MaxNameLength {
			h.log.Error("wshub: Authenticate returned an over-long user id", "len", len(userID))
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		}
	}
	if !isUpgrade(r) {
		// Let the websocket library answer with the right status and headers.
		_, _ = websocket.Accept(w, r, nil)
		return
	}
	if err := h.checkOrigin(r); err != nil {
		h.log.Debug("wshub: upgrade refused", "remote", r.RemoteAddr, "err", err)
		http.Error(w, err.Error(), http.StatusForbidden)
		return
	}

	if !canHijack(w) {
		h.log.Error("wshub: the http.ResponseWriter cannot hijack the connection (HTTP/2, or middleware hiding http.Hijacker)")
		http.Error(w, http.StatusText(http.StatusNotImplemented), http.StatusNotImplemented)
		return
	}

	rp, err := parseResume(r)
	if err != nil {
		h.log.Debug("wshub: upgrade refused", "remote", r.RemoteAddr, "err", err)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	since := rp.since
	s := h.newSession(r, userID)
	s.packed = r.URL.Query().Get(BatchParam) != ""
	s.positions, s.clientKey = rp.positions, rp.client
	if since != nil {
		s.startResume(since)
	}
	if err := h.register(r.Context(), s); err != nil {
		s.cancel()
		s.stopHubLink()
		h.log.Warn("wshub: cannot register session", "err", err)
		http.Error(w, "wshub: backplane unavailable", http.StatusServiceUnavailable)
		return
	}
	// OnConnect runs before the handshake completes, so that what it sets
	// up (topics joined, messages queued) is in place once the client sees
	// the connection open.
	if h.opts.OnConnect != nil {
		if ok, err := s.onConnect(); !ok {
			s.abandon()
			if h.opts.OnDisconnect != nil {
				s.onDisconnect(ErrHookPanic)
			}
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		} else if err != nil {
			_ = s.Close(StatusPolicyViolation, closeReason(err.Error()))
		}
	}
	cw := &corkingWriter{ResponseWriter: w}
	conn, err := websocket.Accept(cw, r, &websocket.AcceptOptions{OriginPatterns: h.opts.AllowedOrigins})
	if err != nil {
		h.log.Warn("wshub: upgrade failed", "remote", r.RemoteAddr, "err", err)
		s.abandon()
		if h.opts.OnConnect != nil && h.opts.OnDisconnect != nil {
			s.onDisconnect(err)
		}
		return
	}
	h.stats.accepted.Add(1)
	if since != nil {
		s.wg.Add(1)
		go s.resume(h.replay)
	}
	s.serve(conn, cw.conn)
}

// checkOrigin refuses a cross-origin upgrade unless Options.AllowedOrigins
// allows it, with the rules the websocket library applies during Accept; it
// runs first so that a refused request costs no subscription and no hook.
func (h *Hub) checkOrigin(r *http.Request) error {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return nil // not a browser
	}
	u, err := url.Parse(origin)
	if err != nil {
		return fmt.Errorf("wshub: bad Origin header %q", origin)
	}
	if strings.EqualFold(u.Host, r.Host) {
		return nil
	}
	for _, pattern := range h.opts.AllowedOrigins {
		target := u.Host
		if strings.Contains(pattern, "://") {
			target = u.Scheme + "://" + u.Host
		}
		if ok, _ := path.Match(strings.ToLower(pattern), strings.ToLower(target)); ok {
			return nil
		}
	}
	return fmt.Errorf("wshub: origin %q is not allowed", origin)
}

// closeReason cuts s to the 123 bytes a close frame can carry, on a rune
// boundary.
func closeReason(s string) string {
	for len(s) > 123 || !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

// isUpgrade reports whether r is a WebSocket handshake the websocket library
// will take (RFC 6455, section 4.2.1); others are left to it to refuse with
// the right status, before any subscription or hook.
func isUpgrade(r *http.Request) bool {
	if r.Method != http.MethodGet || !r.ProtoAtLeast(1, 1) ||
		!headerHasToken(r.Header, "Connection", "upgrade") ||
		!headerHasToken(r.Header, "Upgrade", "websocket") ||
		r.Header.Get("Sec-WebSocket-Version") != "13" {
		return false
	}
	key, err := base64.StdEncoding.DecodeString(r.Header.Get("Sec-WebSocket-Key"))
	return err == nil && len(key) == 16
}

// headerHasToken reports whether a comma-separated header holds token, in
// any case.
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, p := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(p), token) {
				return true
			}
		}
	}
	return false
}

// register adds s to the indexes and waits until the backplane delivers the
// user's channel and this node's inbox, so that a Send made once the client's
// handshake completes reaches it.
func (h *Hub) register(ctx context.Context, s *Session) error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return ErrClosed
	}
	h.sessions[s.id] = s
	var userReady *flush
	if s.userID != "" {
		set := h.users[s.userID]
		if set == nil {
			set = make(map[*Session]struct{})
			h.users[s.userID] = set
		}
		set[s] = struct{}{}
		userReady = h.interest.acquire(userPrefix + s.userID)
	}
	h.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, h.opts.SubscribeTimeout)
	defer cancel()
	stop := context.AfterFunc(h.ctx, cancel) // a forced Close ends the wait
	defer stop()
	err := userReady.wait(ctx)
	if err == nil {
		err = h.interest.ready(h.inbox).wait(ctx)
	}
	if err != nil {
		h.unregister(s)
		return fmt.Errorf("wshub: subscribe: %w", err)
	}
	return nil
}

// unregister removes s from every index and releases its channels. It is
// safe to call more than once.
func (h *Hub) unregister(s *Session) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.sessions[s.id] != s {
		return
	}
	delete(h.sessions, s.id)
	if s.userID != "" {
		set := h.users[s.userID]
		delete(set, s)
		if len(set) == 0 {
			delete(h.users, s.userID)
		}
		h.interest.release(userPrefix + s.userID)
	}
	for topic := range s.topics {
		h.leaveLocked(s, topic)
	}
}

// joinLocked adds s to topic and returns the flush to wait for, if any.
func (h *Hub) joinLocked(s *Session, topic string) *flush {
	if _, ok := s.topics[topic]; ok {
		return h.interest.ready(topicPrefix + topic)
	}
	if s.topics == nil {
		s.topics = make(map[string]struct{})
	}
	s.topics[topic] = struct{}{}
	set := h.topics[topic]
	if set == nil {
		set = make(map[*Session]struct{})
		h.topics[topic] = set
	}
	set[s] = struct{}{}
	return h.interest.acquire(topicPrefix + topic)
}

func (h *Hub) leaveLocked(s *Session, topic string) {
	if _, ok := s.topics[topic]; !ok {
		return
	}
	delete(s.topics, topic)
	set := h.topics[topic]
	delete(set, s)
	if len(set) == 0 {
		delete(h.topics, topic)
	}
	h.interest.release(topicPrefix + topic)
}

// newSessionID returns a cluster-unique ID that names this node.
func (h *Hub) newSessionID() string {
	return h.opts.NodeID + "." + strconv.FormatUint(h.seq.Add(1), 36) + randomSuffix()
}

// nodeOf returns the node ID inside a session ID.
func nodeOf(sessionID string) (string, bool) {
	i := strings.LastIndexByte(sessionID, '.')
	if i <= 0 || i == len(sessionID)-1 {
		return "", false
	}
	return sessionID[:i], true
}

func checkName(name string, sentinel error) error {
	if name == "" {
		return fmt.Errorf("%w: empty", sentinel)
	}
	if len(name) > MaxNameLength {
		return fmt.Errorf("%w: %d bytes, limit %d", sentinel, len(name), MaxNameLength)
	}
	return nil
}

func flags(m Message) byte {
	if m.Type == MessageBinary {
		return envelope.FlagBinary
	}
	return 0
}

// publish encodes e once and hands it to the backplane.
func (h *Hub) publish(ctx context.Context, channel string, e *envelope.Envelope) error {
	if h.isClosed() {
		return ErrClosed
	}
	if err := h.bp.Publish(ctx, channel, e.Encode()); err != nil {
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
	if err := h.checkMessage(msg); err != nil {
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
	if err := h.checkMessage(msg); err != nil {
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
		h.mu.RLock()
		if s := h.sessions[bo.except]; s != nil {
			client = s.clientKey
		}
		h.mu.RUnlock()
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
	if err := h.checkMessage(msg); err != nil {
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
// Options.OnConnect.
func (h *Hub) Join(ctx context.Context, userID, topic string) error {
	return h.control(ctx, envelope.OpJoin, userID, topic)
}

// Leave removes every session of userID, on every node, from topic. Like
// Join, it is applied by each node when the request arrives.
func (h *Hub) Leave(ctx context.Context, userID, topic string) error {
	return h.control(ctx, envelope.OpLeave, userID, topic)
}

func (h *Hub) control(ctx context.Context, op envelope.Op, userID, topic string) error {
	if err := checkName(userID, ErrInvalidUserID); err != nil {
		return err
	}
	if err := checkName(topic, ErrInvalidTopic); err != nil {
		return err
	}
	return h.publish(ctx, userPrefix+userID, &envelope.Envelope{Op: op, Target: userID, Arg: topic})
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

// receive is the backplane handler: it decodes an envelope and hands it to
// the local sessions it names. It never blocks on a socket. What arrives on
// a user's channel while a Join of that user waits for its topic's
// subscription is held back in order (see joinGates).
func (h *Hub) receive(m backplane.Message) {
	if h.gates.hold(m) {
		return
	}
	if f := h.handle(m); f != nil {
		h.gates.open(m.Channel, f)
	}
}

// handle applies one message from the backplane. For a Join that a local
// session took part in, it returns the flush that confirms the topic's
// subscription, which later messages on channel must wait for.
func (h *Hub) handle(m backplane.Message) *flush {
	channel, off := m.Channel, m.Offset
	e, err := envelope.Decode(m.Payload)
	if err == nil && (len(e.Payload) > h.opts.MaxMessageSize || len(e.Target) > 2*MaxNameLength) {
		err = fmt.Errorf("payload of %d bytes or target of %d: over the hub's limits", len(e.Payload), len(e.Target))
	}
	if err != nil {
		h.stats.malformed.Add(1)
		h.log.Debug("wshub: dropped malformed backplane message", "channel", channel, "err", err)
		return nil
	}
	d := delivery{msg: outMsg{typ: websocket.MessageText, data: e.Payload}, channel: channel, off: off}
	if e.Flags&envelope.FlagBinary != 0 {
		d.msg.typ = websocket.MessageBinary
	}
	switch e.Op {
	case envelope.OpUser:
		h.mu.RLock()
		h.fanOut(h.users[e.Target], &d, "")
		h.mu.RUnlock()
	case envelope.OpTopic:
		h.mu.RLock()
		h.fanOut(h.topics[e.Target], &d, e.Arg)
		h.mu.RUnlock()
	case envelope.OpSession:
		h.mu.RLock()
		s := h.sessions[e.Target]
		h.mu.RUnlock()
		d.off = ""
		if s != nil && s.deliver(&d) {
			h.stats.delivered.Add(1)
		}
	case envelope.OpJoin, envelope.OpLeave:
		if checkName(e.Arg, ErrInvalidTopic) != nil {
			h.stats.malformed.Add(1)
			return nil
		}
		var f *flush
		h.mu.Lock()
		for s := range h.users[e.Target] {
			if e.Op == envelope.OpJoin {
				if g := h.joinLocked(s, e.Arg); g != nil {
					f = g
				}
			} else {
				h.leaveLocked(s, e.Arg)
			}
		}
		h.mu.Unlock()
		return f
	case envelope.OpFlush:
		h.mu.Lock()
		if ch, ok := h.flushes[e.Target]; ok {
			close(ch)
			delete(h.flushes, e.Target)
		}
		h.mu.Unlock()
	case envelope.OpDisconnect:
		code := StatusCode(e.Code)
		if e.Code > 4999 || !validStatus(code, e.Arg) {
			h.stats.malformed.Add(1)
			return nil
		}
		h.mu.RLock()
		list := make([]*Session, 0, len(h.users[e.Target]))
		for s := range h.users[e.Target] {
			list = append(list, s)
		}
		h.mu.RUnlock()
		for _, s := range list {
			_ = s.Close(code, e.Arg)
		}
	}
	return nil
}

// fanOut queues d to every session in set but the one with ID except. The
// caller holds h.mu for reading.
func (h *Hub) fanOut(set map[*Session]struct{}, d *delivery, except string) {
	var n uint64
	for s := range set {
		if s.id != except && s.deliver(d) {
			n++
		}
	}
	h.stats.delivered.Add(n)
}

// flushInbox publishes a marker to this node's own inbox and waits for it, or
// for ctx or WriteTimeout, so that what this node published before Close and
// the backplane still holds reaches local sessions before they close. It is
// exact on backplanes that keep one order across a node's channels (memory,
// Redis pub/sub) and best effort on others.
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
	if h.interest.ready(h.inbox).wait(ctx) != nil {
		return
	}
	if c, ok := h.bp.(backplane.Checker); ok && c.Health() != nil {
		return // the marker could not come back: nothing to wait for
	}
	e := envelope.Envelope{Op: envelope.OpFlush, Target: token}
	if err := h.bp.Publish(ctx, h.inbox, e.Encode()); err != nil {
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
	switch e.Kind {
	case backplane.EventDown:
		h.stats.backplaneDown.Add(1)
		h.log.Warn("wshub: backplane down", "err", e.Err)
	case backplane.EventRestored:
		if e.Gap {
			h.stats.backplaneGaps.Add(1)
		}
		h.log.Warn("wshub: backplane restored", "gap", e.Gap)
	}
	if h.opts.OnBackplaneEvent != nil {
		h.opts.OnBackplaneEvent(e)
	}
}

// Health reports whether the hub can deliver across the cluster now, for a
// readiness check. It returns ErrClosed once the hub is closing, the
// backplane's error when the backplane implements backplane.Checker and is
// not delivering (wrapping backplane.ErrUnavailable), and nil otherwise.
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
// (going away) and waits for every goroutine the hub started. When ctx ends
// first, the remaining connections are closed at once and Close returns an
// error wrapping ctx.Err() after the goroutines have ended. A backplane given
// in Options is not closed; the hub's channels on it are unsubscribed, unless
// ctx has already ended. Calling Close again returns the
// first call's result.
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
	h.flushInbox(ctx)
	h.mu.Lock()
	list := make([]*Session, 0, len(h.sessions))
	for _, s := range h.sessions {
		list = append(list, s)
	}
	h.mu.Unlock()
	for _, s := range list {
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
