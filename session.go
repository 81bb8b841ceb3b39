package wshub

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
)

// Session is one WebSocket connection held by this node.
//
// Its methods are safe for concurrent use. Send never blocks on the socket:
// messages wait in a bounded queue drained by a writer goroutine that runs
// only while there is something to write.
type Session struct {
	hub    *Hub
	id     string
	userID string
	req    *http.Request // the upgrade request
	ctx    context.Context
	cancel context.CancelFunc

	valuesMu sync.Mutex
	values   map[any]any // Set and Get

	// topics is guarded by the hub's registry.
	topics map[string]struct{}

	mu          sync.Mutex
	idle        sync.Cond // signalled when the writer stops
	conn        *websocket.Conn
	cork        *corkConn // the socket under conn
	q           sendQueue
	writing     bool
	closing     bool
	closeCode   StatusCode
	closeReason string
	pingTimer   *time.Timer
	wg          sync.WaitGroup // writer, closer and ping goroutines

	// framing is what the connection asked for (see protocol.go), set
	// before the session can receive anything.
	framing framing
	rs      *resumeState // a resume in progress, guarded by mu

	stopHubLink func() bool  // unlinks ctx from the hub's lifetime
	inHook      atomic.Bool  // OnMessage is running: nobody reads pongs
	reads       atomic.Int64 // messages read, as proof of life for pings

	// slowErr is why the session was closed as too slow, wrapping
	// ErrSlowClient; nil otherwise. Guarded by mu.
	slowErr error

	// guard limits what the client sends (see readGuard), set before the
	// handshake. Once violated is set (the client broke its limits or the
	// protocol), nothing more it sends reaches OnMessage; violation,
	// guarded by mu, is the error (ErrRateLimit, ErrInvalidText) that
	// OnDisconnect's wraps when it is what closed the session.
	guard     *readGuard
	violated  atomic.Bool
	violation error

	meter sessionMeter // for the write latency (see meter.go)
}

func randomSuffix() string {
	return "-" + strconv.FormatUint(rand.Uint64()>>16, 36)
}

func (h *Hub) newSession(r *http.Request, userID string) *Session {
	s := &Session{hub: h, id: h.newSessionID(), userID: userID, req: r, q: newSendQueue(&h.opts, &h.stats.dropped)}
	s.idle.L = &s.mu
	// The session's context keeps the request's values (set by middleware,
	// say) but lives as long as the session, within the hub's lifetime.
	s.ctx, s.cancel = context.WithCancel(context.WithoutCancel(r.Context()))
	s.stopHubLink = context.AfterFunc(h.ctx, s.cancel)
	return s
}

// ID returns the session's cluster-unique ID, usable with Hub.SendSession
// from any node.
func (s *Session) ID() string { return s.id }

// Request returns the upgrade request that opened the session: its URL,
// headers and remote address, for the hooks (OnConnect, say). Its body has
// been consumed and its context ends when the handshake is over: use
// Context for the session's lifetime. The request must not be modified.
func (s *Session) Request() *http.Request { return s.req }

// Set stores a value of the application's under key for the life of the
// session, for its hooks to share (the user's profile, say). Keys are
// compared like map keys.
func (s *Session) Set(key, value any) {
	s.valuesMu.Lock()
	defer s.valuesMu.Unlock()
	if s.values == nil {
		s.values = make(map[any]any)
	}
	s.values[key] = value
}

// Get returns the value Set stored under key, and whether there is one.
func (s *Session) Get(key any) (any, bool) {
	s.valuesMu.Lock()
	defer s.valuesMu.Unlock()
	v, ok := s.values[key]
	return v, ok
}

// UserID returns the user ID Options.Authenticate gave, or "" for an
// anonymous session.
func (s *Session) UserID() string { return s.userID }

// Context returns the session's context. It carries the values of the
// upgrade request's context and is canceled when the session ends.
func (s *Session) Context() context.Context { return s.ctx }

// Topics returns the topics the session is in, sorted.
func (s *Session) Topics() []string { return s.hub.reg.topicsOf(s) }

// InTopic reports whether the session is in topic.
func (s *Session) InTopic(topic string) bool { return s.hub.reg.inTopic(s, topic) }

// Join adds the session to topic on this node and returns once broadcasts to
// topic from any node reach it (the backplane confirmed the subscription), or
// when ctx ends. Joining a topic twice is not an error; joining one more
// topic than Limits.TopicsPerSession allows returns an error wrapping
// ErrLimit.
func (s *Session) Join(ctx context.Context, topic string) error {
	if err := checkName(topic, ErrInvalidTopic); err != nil {
		return err
	}
	s.mu.Lock()
	closing := s.closing
	s.mu.Unlock()
	if closing {
		return ErrSessionClosed
	}
	f, already, err := s.hub.reg.join(s, topic)
	if err != nil {
		return err // ErrSessionClosed, or a limit
	}
	if err := f.wait(ctx); err != nil {
		if !already {
			s.hub.reg.leave(s, topic)
		}
		return fmt.Errorf("wshub: join %q: %w", topic, err)
	}
	return nil
}

// Leave removes the session from topic. Leaving a topic the session is not
// in is not an error. It does not block.
func (s *Session) Leave(topic string) error {
	if err := checkName(topic, ErrInvalidTopic); err != nil {
		return err
	}
	s.hub.reg.leave(s, topic)
	return nil
}

// Send queues msg for this session alone and returns without waiting for the
// socket. When the queue is full, Options.SlowPolicy applies.
func (s *Session) Send(msg Message) error {
	if err := msg.check(s.hub.opts.MaxMessageSize); err != nil {
		return err
	}
	data := msg.Data
	if s.framing.positions {
		data = frame("", data) // no offset: an empty head
	}
	if !s.enqueueAt(outMsg{typ: websocket.MessageType(msg.Type), data: data}, true, mono()) {
		return ErrSessionClosed
	}
	s.hub.stats.delivered.Add(1)
	return nil
}

// Close sends what the session has queued, then closes the WebSocket with
// code and reason. It returns at once; the session ends in the background and
// Options.OnDisconnect reports it. Closing a closed session is not an error.
func (s *Session) Close(code StatusCode, reason string) error {
	if !validStatus(code, reason) {
		return fmt.Errorf("%w: %d %q", ErrInvalidCloseStatus, code, reason)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.startCloseLocked(code, reason)
	return nil
}

// startCloseLocked marks the session closing; once the socket exists and the
// writer is idle, a goroutine performs the close handshake.
func (s *Session) startCloseLocked(code StatusCode, reason string) {
	if s.closing {
		return
	}
	s.closing = true
	s.closeCode, s.closeReason = code, reason
	if s.pingTimer != nil {
		s.pingTimer.Stop()
	}
	if s.conn != nil {
		s.wg.Add(1)
		go s.closeGracefully()
	}
}

func (s *Session) closeGracefully() {
	defer s.wg.Done()
	s.mu.Lock()
	for s.writing {
		s.idle.Wait()
	}
	code, reason := s.closeCode, s.closeReason
	s.mu.Unlock()
	if s.guard != nil {
		s.guard.stop() // read the client's answer at once
	}
	_ = s.conn.Close(websocket.StatusCode(code), reason)
}

// enqueue adds m to the queue and starts the writer if it is idle. It
// reports false when the session is closing or was closed as too slow.
func (s *Session) enqueue(m outMsg) bool { return s.enqueueAt(m, true, mono()) }

// enqueueAt is enqueue at now (mono). When through is set, nothing is
// queued, no writer runs and the socket has been idle for a while
// (Hub.throughIdle), it first writes m to the socket itself, without
// waiting (see corkConn.writeThrough): only what the socket would not take
// at once, if anything, is queued for the writer.
func (s *Session) enqueueAt(m outMsg, through bool, now int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	if through && !s.writing && s.conn != nil && s.q.empty() && !s.framing.packed && s.cork.idleSince(now, s.hub.throughIdle) {
		size := payloadLen(m)
		ok, partial := s.cork.writeThrough(&m)
		if ok {
			s.wroteThrough(size, !partial)
		}
		if ok && !partial {
			return true
		}
		if ok {
			m = outMsg{typ: restMsg} // the writer finishes the frame
		}
	}
	s.markQueued()
	if !s.q.push(m) {
		s.slowLocked(fmt.Errorf("%w: send queue full (%d messages, %d bytes)", ErrSlowClient, len(s.q.msgs), s.q.bytes), false)
		s.q.reset()
		s.startCloseLocked(StatusTryAgainLater, "send queue full")
		return false
	}
	if !s.writing && s.conn != nil {
		s.writing = true
		s.wg.Add(1)
		go s.writeLoop()
	}
	return true
}

// serve runs the session on conn until it ends; it owns every goroutine of
// the session.
func (s *Session) serve(conn *websocket.Conn, cork *corkConn) {
	h := s.hub
	conn.SetReadLimit(h.opts.ReadLimit)
	if err := cork.setWriteBuffer(h.opts.SocketWriteBuffer); err != nil {
		h.log.Debug("wshub: cannot size the socket's send buffer", "session", s.id, "err", err)
	}
	// Every write to the socket, the library's too, is bounded from the
	// start (the fan-out's own never wait).
	_ = cork.arm(h.opts.WriteTimeout)
	s.mu.Lock()
	s.conn, s.cork = conn, cork
	if s.rs != nil {
		s.wg.Add(1)
		go s.resume(h.replay)
	}
	// What was queued before the handshake (by OnConnect, say) goes first,
	// even when the session is already closing.
	if !s.q.empty() {
		s.writing = true
		s.wg.Add(1)
		go s.writeLoop()
	}
	if s.closing {
		s.wg.Add(1)
		go s.closeGracefully()
	} else if h.opts.PingInterval > 0 {
		s.pingTimer = time.AfterFunc(h.opts.PingInterval, s.ping)
	}
	s.mu.Unlock()

	// cause is why the session ends: the read error, unless a hook
	// panicked first; then reading goes on only to finish the close
	// handshake, and nothing more is dispatched.
	var cause error
	defer func() { s.end(cause) }()
	for {
		typ, data, err := conn.Read(s.ctx)
		if err != nil {
			if cause == nil {
				cause = err
			}
			return
		}
		s.reads.Add(1)
		h.stats.received.Add(1)
		h.meters.bytesIn.Add(uint64(len(data)))
		if typ == websocket.MessageText && !utf8.Valid(data) {
			// RFC 6455, section 8.1.
			if s.violate(ErrInvalidText, StatusInvalidFramePayloadData, "invalid UTF-8") {
				h.stats.invalidText.Add(1)
			}
			continue
		}
		if h.opts.OnMessage != nil && cause == nil && !s.violated.Load() && !s.onMessage(Message{Type: MessageType(typ), Data: data}) {
			cause = ErrHookPanic
		}
	}
}

// onMessage calls Options.OnMessage and reports false if it panicked; the
// panic is logged and the session closed with status 1011.
func (s *Session) onMessage(m Message) (ok bool) {
	s.inHook.Store(true)
	defer s.inHook.Store(false)
	defer s.recoverHook("OnMessage", &ok)
	s.hub.opts.OnMessage(s.ctx, s, m)
	return true
}

// recoverHook turns a panic in an application hook into a logged error and
// a 1011 close of the session, so that one bad message cannot leave a
// session half alive or take the server down.
func (s *Session) recoverHook(hook string, ok *bool) {
	if v := recover(); v != nil {
		*ok = false
		s.hub.log.Error("wshub: panic in "+hook, "session", s.id, "panic", v, "stack", string(debug.Stack()))
		_ = s.Close(StatusInternalError, "internal error")
	}
}

// end releases everything the session holds once its read loop is over. It
// runs deferred, so it also runs if the websocket library panics.
func (s *Session) end(err error) {
	h := s.hub
	h.reg.remove(s)
	s.mu.Lock()
	s.closing = true
	if s.pingTimer != nil {
		s.pingTimer.Stop()
	}
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	s.stopHubLink()
	_ = s.conn.CloseNow()
	s.mu.Lock()
	if s.violation != nil {
		err = fmt.Errorf("%w: %w", s.violation, err)
	}
	if s.slowErr != nil {
		// Why the session was closed comes first; the read error after
		// it keeps the close handshake's status for CloseStatus.
		err = fmt.Errorf("%w: %w", s.slowErr, err)
	}
	s.mu.Unlock()
	h.countClose(s, err)
	s.onDisconnect(err)
}

// onDisconnect calls Options.OnDisconnect, if set; a panic in it is logged,
// since the session is already over.
func (s *Session) onDisconnect(err error) {
	if s.hub.opts.OnDisconnect == nil {
		return
	}
	defer func() {
		if v := recover(); v != nil {
			s.hub.log.Error("wshub: panic in OnDisconnect", "session", s.id, "panic", v, "stack", string(debug.Stack()))
		}
	}()
	s.hub.opts.OnDisconnect(s, err)
}

// abandon ends a session whose upgrade failed after OnConnect saw it.
func (s *Session) abandon() {
	s.hub.reg.remove(s)
	s.mu.Lock()
	s.closing = true
	s.q.reset()
	s.mu.Unlock()
	s.cancel()
	s.stopHubLink()
}

// ping checks that the peer still answers; one that does not is closed.
func (s *Session) ping() {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()

	reads, busy := s.reads.Load(), s.inHook.Load()
	err := s.pingAndWait()
	// A ping whose own write stalled found a slow client, whatever else.
	stalled := err != nil && s.stalled(err)
	// A pong is read only by the read loop. While OnMessage runs, nothing
	// reads, so a ping that overlapped it proves nothing; a message read
	// meanwhile proves the peer alive anyway.
	if err != nil && !stalled && s.ctx.Err() == nil && (busy || s.inHook.Load() || s.reads.Load() != reads) {
		err = nil
	}
	if err != nil {
		if !stalled && s.ctx.Err() == nil {
			s.hub.log.Debug("wshub: ping failed, closing session", "session", s.id, "err", err)
		}
		_ = s.conn.CloseNow()
		return
	}
	s.mu.Lock()
	if !s.closing {
		s.pingTimer.Reset(s.hub.opts.PingInterval)
	}
	s.mu.Unlock()
}

// pingAndWait pings the peer and waits for its pong for as long as the
// socket keeps taking bytes: the pong comes only after the peer has read
// everything queued before the ping, which a slow but steady reader may take
// longer than WriteTimeout to do. It gives up once the socket has taken
// nothing for WriteTimeout while no write to it was in progress (a write in
// progress is bounded by the write deadline, and fails by itself).
func (s *Session) pingAndWait() error {
	timeout := s.hub.opts.WriteTimeout
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.conn.Ping(ctx) }()
	start := time.Now()
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case err := <-done:
			return err
		case <-t.C:
		}
		idle, writing := s.cork.idle(start)
		if idle >= timeout && !writing {
			cancel()
			if err := <-done; err != nil {
				return fmt.Errorf("wshub: no pong, and the socket took nothing for %v: %w", timeout, err)
			}
			return nil
		}
		t.Reset(max(timeout-idle, timeout/4))
	}
}

// Hub returns the hub that holds the session.
func (s *Session) Hub() *Hub { return s.hub }

// onConnect calls Options.OnConnect; ok is false if it panicked.
func (s *Session) onConnect() (ok bool, err error) {
	defer s.recoverHook("OnConnect", &ok)
	return true, s.hub.opts.OnConnect(s.ctx, s)
}
