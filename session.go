package wshub

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

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
	ctx    context.Context
	cancel context.CancelFunc

	// topics is guarded by hub.mu, like the hub's indexes.
	topics map[string]struct{}

	mu          sync.Mutex
	idle        sync.Cond // signalled when the writer stops
	conn        *websocket.Conn
	cork        *corkConn // the socket under conn; nil if the server did not hijack through us
	queue       []outMsg
	spare       []outMsg
	queueBytes  int
	writing     bool
	closing     bool
	closeCode   StatusCode
	closeReason string
	pingTimer   *time.Timer
	wg          sync.WaitGroup // writer, closer and ping goroutines

	// positions is set for a connection that asked for the positions
	// framing (see resume.go), before the session can receive anything.
	positions bool
	rs        *resumeState // a resume in progress, guarded by mu
	// packed is set for a connection that asked for the batched framing
	// (see batch.go), before the session can receive anything.
	packed bool
	// clientKey is the client's ClientParam, if it sent one.
	clientKey string

	stopHubLink func() bool  // unlinks ctx from the hub's lifetime
	inHook      atomic.Bool  // OnMessage is running: nobody reads pongs
	reads       atomic.Int64 // messages read, as proof of life for pings

	// slowErr is why the session was closed as too slow, wrapping
	// ErrSlowClient; nil otherwise. Guarded by mu.
	slowErr error
}

type outMsg struct {
	typ  websocket.MessageType
	data []byte
}

// queuedOverhead is what each queued message counts against
// Options.SendQueueBytes besides its bytes: its slot in the queue and its
// framing, so that a queue of empty messages is bounded by bytes too.
const queuedOverhead = 64

// maxBatchBytes bounds, in queued bytes, the batch a writer takes from the
// queue at once (a larger message goes alone): the rest stays queued, where
// SlowDropOldest can still drop it, and a session holds at most this much
// besides its queue.
const maxBatchBytes = 256 << 10

func randomSuffix() string {
	return "-" + strconv.FormatUint(rand.Uint64()>>16, 36)
}

func (h *Hub) newSession(r *http.Request, userID string) *Session {
	s := &Session{hub: h, id: h.newSessionID(), userID: userID}
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

// UserID returns the user ID Options.Authenticate gave, or "" for an
// anonymous session.
func (s *Session) UserID() string { return s.userID }

// Context returns the session's context. It carries the values of the
// upgrade request's context and is canceled when the session ends.
func (s *Session) Context() context.Context { return s.ctx }

// Topics returns the topics the session is in, sorted.
func (s *Session) Topics() []string {
	s.hub.mu.RLock()
	t := make([]string, 0, len(s.topics))
	for k := range s.topics {
		t = append(t, k)
	}
	s.hub.mu.RUnlock()
	sort.Strings(t)
	return t
}

// InTopic reports whether the session is in topic.
func (s *Session) InTopic(topic string) bool {
	s.hub.mu.RLock()
	defer s.hub.mu.RUnlock()
	_, ok := s.topics[topic]
	return ok
}

// Join adds the session to topic on this node and returns once broadcasts to
// topic from any node reach it (the backplane confirmed the subscription), or
// when ctx ends. Joining a topic twice is not an error.
func (s *Session) Join(ctx context.Context, topic string) error {
	if err := checkName(topic, ErrInvalidTopic); err != nil {
		return err
	}
	h := s.hub
	h.mu.Lock()
	s.mu.Lock()
	closing := s.closing
	s.mu.Unlock()
	if closing || h.sessions[s.id] != s {
		h.mu.Unlock()
		return ErrSessionClosed
	}
	_, already := s.topics[topic]
	f := h.joinLocked(s, topic)
	h.mu.Unlock()
	if err := f.wait(ctx); err != nil {
		if !already {
			h.mu.Lock()
			h.leaveLocked(s, topic)
			h.mu.Unlock()
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
	s.hub.mu.Lock()
	s.hub.leaveLocked(s, topic)
	s.hub.mu.Unlock()
	return nil
}

// Send queues msg for this session alone and returns without waiting for the
// socket. When the queue is full, Options.SlowPolicy applies.
func (s *Session) Send(msg Message) error {
	if err := s.hub.checkMessage(msg); err != nil {
		return err
	}
	data := msg.Data
	if s.positions {
		data = frame("", data) // no offset: an empty head
	}
	if !s.enqueue(outMsg{typ: websocket.MessageType(msg.Type), data: data}) {
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
	_ = s.conn.Close(websocket.StatusCode(code), reason)
}

// enqueue adds m to the queue and starts the writer if it is idle. It
// reports false when the session is closing or was closed as too slow.
func (s *Session) enqueue(m outMsg) bool {
	o := &s.hub.opts
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	if s.fullLocked(len(m.data)) {
		if o.SlowPolicy == SlowClose {
			s.slowLocked(fmt.Errorf("%w: send queue full (%d messages, %d bytes)", ErrSlowClient, len(s.queue), s.queueBytes), false)
			s.queue, s.queueBytes = nil, 0
			s.startCloseLocked(StatusTryAgainLater, "send queue full")
			return false
		}
		var dropped uint64
		for s.fullLocked(len(m.data)) {
			s.queueBytes -= len(s.queue[0].data) + queuedOverhead
			s.queue[0] = outMsg{}
			s.queue = s.queue[1:]
			dropped++
		}
		s.hub.stats.dropped.Add(dropped)
		if o.SendQueueLen == 0 {
			return false
		}
	}
	s.queue = append(s.queue, m)
	s.queueBytes += len(m.data) + queuedOverhead
	if !s.writing && s.conn != nil {
		s.writing = true
		s.wg.Add(1)
		go s.writeLoop()
	}
	return true
}

// writeLoop drains the queue in batches and ends when it is empty, so an
// idle session holds no writer goroutine.
func (s *Session) writeLoop() {
	defer s.wg.Done()
	// Let the producer that started this writer (a fan-out to thousands
	// of sessions, say) run on first, so that the first batch carries more
	// than the one message that woke the writer.
	runtime.Gosched()
	var batch []outMsg
	for {
		s.mu.Lock()
		if len(s.queue) == 0 {
			s.writing = false
			s.spare = batch[:0]
			s.idle.Broadcast()
			s.mu.Unlock()
			return
		}
		batch = s.takeLocked(batch)
		s.mu.Unlock()

		err := s.writeBatch(batch)
		if err != nil {
			if !s.stalled(err) {
				s.hub.log.Debug("wshub: write failed, closing session", "session", s.id, "err", err)
			}
			_ = s.conn.CloseNow()
			s.mu.Lock()
			s.closing = true
			s.queue, s.queueBytes = nil, 0
			s.writing = false
			s.idle.Broadcast()
			s.mu.Unlock()
			return
		}
	}
}

// takeLocked moves the next batch out of the queue and returns it: all of
// the queue when it holds at most maxBatchBytes, else its oldest messages up
// to that, at least one. prev is the batch written last, cleared, whose
// array it reuses.
func (s *Session) takeLocked(prev []outMsg) []outMsg {
	if s.queueBytes <= maxBatchBytes {
		batch := s.queue
		s.queue, s.spare = s.spare, nil
		if s.queue == nil {
			s.queue = prev[:0]
		}
		s.queueBytes = 0
		return batch
	}
	n, size := 0, 0
	for ; n < len(s.queue); n++ {
		c := len(s.queue[n].data) + queuedOverhead
		if n > 0 && size+c > maxBatchBytes {
			break
		}
		size += c
	}
	batch := append(prev[:0], s.queue[:n]...)
	clear(s.queue[:n])
	s.queue = s.queue[n:]
	s.queueBytes -= size
	return batch
}

// fullLocked reports whether the queue has no room for a message of n
// bytes. An empty queue always has room; otherwise it holds at most
// SendQueueLen messages, and a message fits while its bytes and those
// queued, each queued message counted with queuedOverhead, stay within
// SendQueueBytes (the condition resume.go's waitRoom waits out).
func (s *Session) fullLocked(n int) bool {
	o := &s.hub.opts
	return len(s.queue) > 0 && (len(s.queue) >= o.SendQueueLen || s.queueBytes+n > o.SendQueueBytes)
}

// slowLocked records that s is closed as too slow, for reason, which wraps
// ErrSlowClient; stall says a write made no progress. It counts the
// session once, whichever paths find it slow.
func (s *Session) slowLocked(reason error, stall bool) {
	if s.slowErr != nil {
		return
	}
	s.slowErr = reason
	s.hub.stats.slowClosed.Add(1)
	if stall {
		s.hub.stats.writeTimeouts.Add(1)
	}
	s.hub.log.Debug("wshub: closing slow session", "session", s.id, "reason", reason)
}

// stalled reports whether err is from a write that made no progress for
// WriteTimeout (the socket's write deadline passed), and if so records the
// session as too slow.
func (s *Session) stalled(err error) bool {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	s.mu.Lock()
	s.slowLocked(fmt.Errorf("%w: no write progress for %v: %w", ErrSlowClient, s.hub.opts.WriteTimeout, err), true)
	s.mu.Unlock()
	return true
}

// writeBatch writes batch with the socket corked: one system call per
// writeChunk at the end (and whenever corkLimit bytes are buffered), each
// bounded by WriteTimeout; a batch of one message is written uncorked. The
// messages are written with a context that never ends, which spares the
// websocket library a timer per message; the socket's write deadline bounds
// them instead.
func (s *Session) writeBatch(batch []outMsg) error {
	if s.packed {
		return s.writePacked(batch)
	}
	var err error
	ctx := context.Background()
	if s.cork != nil && len(batch) == 1 {
		// One message: the library's one flush is the one system call,
		// so there is nothing to cork.
		if err = s.cork.arm(s.hub.opts.WriteTimeout); err == nil {
			err = s.conn.Write(ctx, batch[0].typ, batch[0].data)
		}
		batch[0] = outMsg{}
		return err
	}
	if s.cork != nil {
		err = s.cork.cork(s.hub.opts.WriteTimeout)
	}
	if s.cork == nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(s.ctx, s.hub.opts.WriteTimeout)
		defer cancel()
	}
	for i := range batch {
		if err == nil {
			err = s.conn.Write(ctx, batch[i].typ, batch[i].data)
		}
		batch[i] = outMsg{}
	}
	if s.cork != nil {
		if uerr := s.cork.uncork(); err == nil {
			err = uerr
		}
	}
	return err
}

// serve runs the session on conn until it ends; it owns every goroutine of
// the session.
func (s *Session) serve(conn *websocket.Conn, cork *corkConn) {
	h := s.hub
	conn.SetReadLimit(h.opts.ReadLimit)
	if cork != nil {
		if err := cork.setWriteBuffer(h.opts.SocketWriteBuffer); err != nil {
			h.log.Debug("wshub: cannot size the socket's send buffer", "session", s.id, "err", err)
		}
	}
	s.mu.Lock()
	s.conn, s.cork = conn, cork
	// What was queued before the handshake (by OnConnect, say) goes first,
	// even when the session is already closing.
	if len(s.queue) > 0 {
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
		if h.opts.OnMessage != nil && cause == nil && !s.onMessage(Message{Type: MessageType(typ), Data: data}) {
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
	h.unregister(s)
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
	if s.slowErr != nil {
		// Why the session was closed comes first; the read error after
		// it keeps the close handshake's status for CloseStatus.
		err = fmt.Errorf("%w: %w", s.slowErr, err)
	}
	s.mu.Unlock()
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
	s.hub.unregister(s)
	s.mu.Lock()
	s.closing = true
	s.queue, s.queueBytes = nil, 0
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
	if s.cork == nil {
		ctx, cancel := context.WithTimeout(s.ctx, timeout)
		defer cancel()
		return s.conn.Ping(ctx)
	}
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
