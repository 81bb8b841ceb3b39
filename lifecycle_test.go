package wshub

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/backplane"
)

// Lifecycle edge cases: failed and refused upgrades, forced closes, hook
// panics, close handshakes racing with writes, and HTTP stacks that wrap the
// ResponseWriter.

// A session closed before its handshake completes (here by OnConnect) still
// sends what was queued before the close.
func TestCloseBeforeHandshakeSendsQueuedFirst(t *testing.T) {
	c := newCluster(t, 1, func(i int, o *Options) {
		o.OnConnect = func(_ context.Context, s *Session) error {
			if err := s.Send(Text("welcome")); err != nil {
				return err
			}
			return s.Close(4000, "bye")
		}
	})
	cl := dial(t, c.nodes[0], "u")
	assert.Equal(t, "welcome", cl.nextText(), "the message queued before Close was dropped")
	assert.Equal(t, StatusCode(4000), cl.closed())
}

// Close with an expired context cancels the context of an OnConnect hook that
// is still running, instead of waiting for it.
func TestForcedCloseCancelsOnConnect(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	h, err := New(&Options{Logger: quiet, OnConnect: func(ctx context.Context, _ *Session) error {
		close(entered)
		select {
		case <-ctx.Done():
		case <-release:
		}
		return ctx.Err()
	}})
	require.NoError(t, err)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	t.Cleanup(unblock)

	dialed := make(chan struct{})
	go func() {
		defer close(dialed)
		ctx, cancel := context.WithTimeout(bg, waitFor)
		defer cancel()
		if conn, _, err := websocket.Dial(ctx, wsURL(srv), nil); err == nil {
			_ = conn.CloseNow()
		}
	}()
	select {
	case <-entered:
	case <-time.After(waitFor):
		t.Fatal("OnConnect was not called")
	}

	closed := make(chan error, 1)
	go func() { closed <- h.Close(canceledCtx()) }()
	select {
	case err := <-closed:
		assert.ErrorIs(t, err, context.Canceled)
	case <-time.After(waitFor):
		unblock()
		<-closed
		t.Error("Close with an expired context waited for OnConnect: the session's context was not canceled")
	}
	<-dialed
}

// unwrapOnly is the shape of many logging and metrics middlewares: it wraps
// the ResponseWriter and exposes the original through Unwrap, as
// http.ResponseController expects, without implementing http.Hijacker.
type unwrapOnly struct{ http.ResponseWriter }

func (w unwrapOnly) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// ginStyle behaves like gin's ResponseWriter: WriteHeader only records the
// status, WriteHeaderNow sends it, Hijack does not send it.
type ginStyle struct {
	http.ResponseWriter
	status  int
	written bool
}

func (w *ginStyle) WriteHeader(code int) {
	if !w.written {
		w.status = code
	}
}

func (w *ginStyle) WriteHeaderNow() {
	if !w.written {
		w.written = true
		w.ResponseWriter.WriteHeader(w.status)
	}
}

func (w *ginStyle) Write(b []byte) (int, error) {
	w.WriteHeaderNow()
	return w.ResponseWriter.Write(b)
}

func (w *ginStyle) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.written = true
	return w.ResponseWriter.(http.Hijacker).Hijack()
}

// failingHijack claims to hijack but fails, so the upgrade fails after the
// hub has run OnConnect.
type failingHijack struct{ http.ResponseWriter }

func (failingHijack) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return nil, nil, errors.New("no connection to hand over")
}

// noHijack hides http.Hijacker entirely (an HTTP/2 stream, or a wrapper
// without Unwrap).
type noHijack struct{ http.ResponseWriter }

// Upgrades work through the ResponseWriters real HTTP stacks hand to a
// handler: middleware that exposes the writer only through Unwrap (as
// http.ResponseController expects), gin's writer whose WriteHeader only
// records the status until WriteHeaderNow; a writer that cannot hand over its
// connection at all gets 501 before any work, never a 101 on a connection
// nobody serves.
func TestUpgradeThroughWrappedWriters(t *testing.T) {
	tests := []struct {
		name string
		wrap func(http.ResponseWriter) http.ResponseWriter
		want int
	}{
		{"unwrap only", func(w http.ResponseWriter) http.ResponseWriter { return unwrapOnly{w} }, http.StatusSwitchingProtocols},
		{"gin style", func(w http.ResponseWriter) http.ResponseWriter {
			return &ginStyle{ResponseWriter: w, status: http.StatusOK}
		}, http.StatusSwitchingProtocols},
		{"no hijacker", func(w http.ResponseWriter) http.ResponseWriter { return noHijack{w} }, http.StatusNotImplemented},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := New(&Options{Logger: quiet})
			require.NoError(t, err)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				h.ServeHTTP(tt.wrap(w), r)
			}))
			t.Cleanup(srv.Close)
			t.Cleanup(func() { require.NoError(t, h.Close(bg)) })

			ctx, cancel := context.WithTimeout(bg, waitFor)
			defer cancel()
			conn, resp, err := websocket.Dial(ctx, wsURL(srv), nil)
			require.NotNil(t, resp)
			assert.Equal(t, tt.want, resp.StatusCode)
			if tt.want != http.StatusSwitchingProtocols {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, 1, h.Stats().Sessions)
			_ = conn.Close(websocket.StatusNormalClosure, "")
		})
	}
}

// When the upgrade fails after OnConnect saw the session, OnDisconnect is told
// and the session refuses Send with ErrSessionClosed.
func TestSendAfterFailedUpgradeReportsSessionClosed(t *testing.T) {
	var got *Session
	gone := make(chan struct{})
	h, err := New(&Options{
		Logger:       quiet,
		OnConnect:    func(_ context.Context, s *Session) error { got = s; return nil },
		OnDisconnect: func(*Session, error) { close(gone) },
	})
	require.NoError(t, err)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(failingHijack{w}, r)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { require.NoError(t, h.Close(bg)) })

	ctx, cancel := context.WithTimeout(bg, waitFor)
	defer cancel()
	if conn, _, err := websocket.Dial(ctx, wsURL(srv), nil); err == nil {
		_ = conn.CloseNow()
	}
	select {
	case <-gone:
	case <-time.After(waitFor):
		t.Fatal("OnDisconnect was not called for the failed upgrade")
	}
	assert.ErrorIs(t, got.Send(Text("into the void")), ErrSessionClosed)
}

// A panic in OnMessage ends the session with 1011 and unregisters it.
func TestPanicInOnMessageEndsTheSession(t *testing.T) {
	h, err := New(&Options{
		Logger:       quiet,
		Authenticate: userFromQuery,
		OnMessage:    func(context.Context, *Session, Message) { panic("bug in the application's handler") },
	})
	require.NoError(t, err)
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.Start()
	t.Cleanup(srv.Close)
	t.Cleanup(func() { require.NoError(t, h.Close(bg)) })

	cl := dial(t, &node{hub: h, srv: srv}, "u")
	require.NoError(t, cl.conn.Write(bg, websocket.MessageText, []byte("boom")))
	assert.Equal(t, StatusInternalError, cl.closed())
	require.Eventually(t, func() bool { return h.Stats().Sessions == 0 }, waitFor, time.Millisecond,
		"the session outlived its ServeHTTP call")
}

// A handler busy for longer than WriteTimeout does not get a healthy client
// dropped as dead: nothing reads pongs while OnMessage runs.
func TestBusyOnMessageIsNotTakenForADeadPeer(t *testing.T) {
	c := newCluster(t, 1, func(i int, o *Options) {
		o.PingInterval = 10 * time.Millisecond
		o.WriteTimeout = 100 * time.Millisecond
		o.OnMessage = func(_ context.Context, s *Session, m Message) {
			time.Sleep(time.Second) // a slow database call, say: many write timeouts
			_ = s.Send(Text("done"))
		}
	})
	cl := dial(t, c.nodes[0], "u") // reads all the time, so it answers every ping
	require.NoError(t, cl.conn.Write(bg, websocket.MessageText, []byte("work")))
	assert.Equal(t, "done", cl.nextText())
}

// A client that closes while the server is writing to it gets the close frame
// echoed (the close handshake completes), even when the echo was written
// while the socket was corked.
func TestClientCloseWhileServerWritesGetsAnEcho(t *testing.T) {
	var log sessionLog
	c := newCluster(t, 1, func(i int, o *Options) {
		o.OnConnect = log.hook
		o.SendQueueLen = 1 << 20
		o.SendQueueBytes = 1 << 30
	})
	failures := 0
	const rounds = 20
	for i := 0; i < rounds; i++ {
		user := fmt.Sprint("u", i)
		cl := dialNoRead(t, c.nodes[0], user)
		s := log.get(t, user, 0)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 100000; j++ {
				if s.Send(Text("0123456789abcdef")) != nil {
					return
				}
			}
		}()
		for j := 0; j < 100; j++ {
			_, _, err := cl.conn.Read(bg)
			require.NoError(t, err)
		}
		ctx, cancel := context.WithTimeout(bg, waitFor)
		err := closeClient(ctx, cl.conn)
		cancel()
		if err != nil {
			failures++
			t.Logf("round %d: %v", i, err)
		}
		_ = s.Close(StatusNormalClosure, "")
		wg.Wait()
	}
	assert.Zero(t, failures, "client close handshakes that got no close frame back, out of %d", rounds)
}

// closeClient performs the client side of the close handshake, bounded by ctx.
func closeClient(ctx context.Context, conn *websocket.Conn) error {
	done := make(chan error, 1)
	go func() { done <- conn.Close(websocket.StatusNormalClosure, "") }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		_ = conn.CloseNow()
		<-done
		return errors.New("close handshake did not finish")
	}
}

// Once Hub.Close has begun, Send is refused with ErrClosed, even while Close
// is still flushing its inbox.
func TestSendAfterCloseBeganIsRefused(t *testing.T) {
	c := newCluster(t, 1, nil)
	n := c.nodes[0]
	dial(t, n, "u")
	require.NoError(t, c.bus.SetDelay("node0", 2*time.Second)) // the marker takes a while
	closed := make(chan error, 1)
	go func() { closed <- n.hub.Close(bg) }()
	waitFlushing(t, n)
	assert.ErrorIs(t, n.hub.Send(bg, "u", Text("after Close began")), ErrClosed)
	require.NoError(t, <-closed)
}

// A Session.Join that fails (its ctx ended) does not remove a membership the
// session already had, here through a cluster-wide Hub.Join.
func TestFailedJoinKeepsEarlierMembership(t *testing.T) {
	bp := newRecordingBP()
	var log sessionLog
	h, err := New(&Options{Backplane: bp, Authenticate: userFromQuery, Logger: quiet, OnConnect: log.hook})
	require.NoError(t, err)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { require.NoError(t, h.Close(bg)) })
	dial(t, &node{hub: h, srv: srv}, "u")
	s := log.get(t, "u", 0)

	hold, holding := make(chan struct{}), make(chan struct{})
	bp.mu.Lock()
	bp.hold, bp.holding = hold, holding
	bp.mu.Unlock()
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(hold) }) })

	require.NoError(t, h.Join(bg, "u", "t")) // applied at once: the bus loops back
	require.True(t, s.InTopic("t"))
	<-holding // the subscription to t:t is in flight

	assert.Error(t, s.Join(canceledCtx(), "t"))
	once.Do(func() { close(hold) })
	assert.True(t, s.InTopic("t"), "a failed Join removed a membership it did not add")
}

// Close with an expired context does not wait for a write blocked on a peer
// that stopped reading.
func TestForcedCloseDoesNotWaitForAStuckWrite(t *testing.T) {
	var log sessionLog
	h, err := New(&Options{
		Logger:         quiet,
		Authenticate:   userFromQuery,
		OnConnect:      log.hook,
		WriteTimeout:   time.Hour, // a stuck write is only ended by closing the socket
		PingInterval:   -1,
		SendQueueLen:   1 << 12,
		SendQueueBytes: 1 << 30,
	})
	require.NoError(t, err)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	n := &node{hub: h, srv: srv}
	cl := dialNoRead(t, n, "stuck")
	s := log.get(t, "stuck", 0)
	chunk := Binary(make([]byte, 128<<10))
	for i := 0; i < 512; i++ { // 64 MiB: more than the socket buffers hold
		require.NoError(t, s.Send(chunk))
	}
	// Wait until the writer is blocked in a flush: it holds the cork's lock
	// for good.
	held := 0
	require.Eventually(t, func() bool {
		s.mu.Lock()
		cork := s.cork
		s.mu.Unlock()
		if cork == nil || cork.mu.TryLock() {
			if cork != nil {
				cork.mu.Unlock()
			}
			held = 0
			return false
		}
		held++
		return held >= 50
	}, waitFor, time.Millisecond, "the writer did not block on the socket")

	closed := make(chan error, 1)
	go func() { closed <- n.hub.Close(canceledCtx()) }()
	select {
	case err := <-closed:
		assert.ErrorIs(t, err, context.Canceled)
	case <-time.After(waitFor):
		t.Error("Close with an expired context waited for a write to a peer that does not read")
		_ = cl.conn.CloseNow() // ends the write, and so the test
		<-closed
	}
}

// After OnMessage panics, nothing more is dispatched to it for that session,
// and OnDisconnect receives ErrHookPanic.
func TestOnMessagePanicEndsDispatchAndIsReported(t *testing.T) {
	var calls atomic.Int32
	gone := make(chan error, 1)
	// The hook panics only once the second message is on its way, so the
	// session is still open when the client writes it.
	secondSent := make(chan struct{})
	h, err := New(&Options{
		Logger: quiet,
		OnMessage: func(context.Context, *Session, Message) {
			calls.Add(1)
			<-secondSent
			panic("bug")
		},
		OnDisconnect: func(_ *Session, err error) { gone <- err },
	})
	require.NoError(t, err)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { require.NoError(t, h.Close(bg)) })

	cl := dial(t, &node{hub: h, srv: srv}, "")
	require.NoError(t, cl.conn.Write(bg, websocket.MessageText, []byte("boom")))
	require.NoError(t, cl.conn.Write(bg, websocket.MessageText, []byte("already sent")))
	close(secondSent)
	assert.Equal(t, StatusInternalError, cl.closed())
	select {
	case err := <-gone:
		assert.ErrorIs(t, err, ErrHookPanic)
	case <-time.After(waitFor):
		t.Fatal("OnDisconnect was not called")
	}
	assert.EqualValues(t, 1, calls.Load(), "OnMessage was called again after it panicked")
}

// An upgrade refused with 503 leaves nothing behind on the hub: its session
// and request context can be collected.
func TestRefusedUpgradeLeavesNothingOnTheHub(t *testing.T) {
	bp := newRecordingBP()
	h, err := New(&Options{Backplane: bp, Authenticate: userFromQuery, Logger: quiet})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, h.Close(bg)) })
	collected := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		marker := new([1 << 10]byte)
		runtime.SetFinalizer(marker, func(*[1 << 10]byte) { close(collected) })
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), markerKey{}, marker)))
	}))
	t.Cleanup(srv.Close)
	bp.setFail(backplane.ErrUnavailable)
	t.Cleanup(func() { bp.setFail(nil) })

	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	ctx, cancel := context.WithTimeout(bg, waitFor)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, wsURL(srv)+"?user=u", &websocket.DialOptions{HTTPClient: client})
	require.Error(t, err)
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	srv.CloseClientConnections()

	require.Eventually(t, func() bool {
		runtime.GC()
		select {
		case <-collected:
			return true
		default:
			return false
		}
	}, waitFor, 10*time.Millisecond, "the refused request's context is still reachable from the hub")
}

type markerKey struct{}

// hungBP is a backplane whose Subscribe hangs, as on a link that silently
// dropped, until its ctx ends or the test lets it go.
type hungBP struct {
	*recordingBP
	release chan struct{}
}

func (b *hungBP) Subscribe(ctx context.Context, chs ...string) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-b.release:
		return b.recordingBP.Subscribe(ctx, chs...)
	}
}

// Close with an expired context does not wait for a backplane call that
// hangs.
func TestForcedCloseDoesNotWaitForAHungBackplane(t *testing.T) {
	bp := &hungBP{recordingBP: newRecordingBP(), release: make(chan struct{})}
	var once sync.Once
	release := func() { once.Do(func() { close(bp.release) }) }
	t.Cleanup(release)
	h, err := New(&Options{Backplane: bp, NodeID: "n", Authenticate: userFromQuery, Logger: quiet,
		SubscribeTimeout: time.Hour})
	require.NoError(t, err)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)

	dialed := make(chan struct{})
	go func() {
		defer close(dialed)
		ctx, cancel := context.WithTimeout(bg, waitFor)
		defer cancel()
		if conn, _, err := websocket.Dial(ctx, wsURL(srv)+"?user=u", nil); err == nil {
			_ = conn.CloseNow()
		}
	}()
	require.Eventually(t, func() bool { return h.Stats().Sessions == 1 }, waitFor, time.Millisecond)

	closed := make(chan error, 1)
	go func() { closed <- h.Close(canceledCtx()) }()
	select {
	case err := <-closed:
		assert.ErrorIs(t, err, context.Canceled)
	case <-time.After(waitFor):
		t.Error("Close with an expired context waited for a hung backplane call")
		release()
		<-closed
	}
	<-dialed
}

// A request that is not a valid WebSocket handshake is refused by the
// websocket library's own answer before the hub subscribes anything or calls
// OnConnect.
func TestInvalidHandshakesCostNothing(t *testing.T) {
	var connects atomic.Int32
	h, err := New(&Options{Logger: quiet, Authenticate: userFromQuery,
		OnConnect: func(context.Context, *Session) error { connects.Add(1); return nil }})
	require.NoError(t, err)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { require.NoError(t, h.Close(bg)) })

	valid := func() *http.Request {
		r, err := http.NewRequest(http.MethodGet, srv.URL+"?user=u", nil)
		require.NoError(t, err)
		r.Header.Set("Connection", "Upgrade")
		r.Header.Set("Upgrade", "websocket")
		r.Header.Set("Sec-WebSocket-Version", "13")
		r.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
		return r
	}
	tests := []struct {
		name   string
		mutate func(r *http.Request)
	}{
		{"POST", func(r *http.Request) { r.Method = http.MethodPost }},
		{"no Connection upgrade", func(r *http.Request) { r.Header.Del("Connection") }},
		{"wrong version", func(r *http.Request) { r.Header.Set("Sec-WebSocket-Version", "8") }},
		{"bad key", func(r *http.Request) { r.Header.Set("Sec-WebSocket-Key", "short") }},
		{"no key", func(r *http.Request) { r.Header.Del("Sec-WebSocket-Key") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := valid()
			tt.mutate(r)
			resp, err := http.DefaultClient.Do(r)
			require.NoError(t, err)
			resp.Body.Close()
			assert.GreaterOrEqual(t, resp.StatusCode, 400)
			assert.Less(t, resp.StatusCode, 500)
		})
	}
	assert.Zero(t, connects.Load(), "OnConnect ran for an invalid handshake")
	h.interest.mu.Lock()
	defer h.interest.mu.Unlock()
	assert.Nil(t, h.interest.chans[userPrefix+"u"], "an invalid handshake subscribed the user")
}

// An upgrade that was already past the closed check when Close began (its
// Authenticate still running) is refused with 503 once it gets to register,
// even while Close waits for its flush, and OnConnect never sees it.
func TestUpgradeInFlightWhenCloseBeginsIsRefused(t *testing.T) {
	entered, release := make(chan struct{}, 2), make(chan struct{})
	var connects atomic.Int32
	c := newCluster(t, 1, func(i int, o *Options) {
		o.Authenticate = func(r *http.Request) (string, error) {
			if r.URL.Query().Get("user") == "late" {
				entered <- struct{}{}
				<-release
			}
			return userFromQuery(r)
		}
		o.OnConnect = func(context.Context, *Session) error { connects.Add(1); return nil }
	})
	n := c.nodes[0]
	dial(t, n, "u") // the inbox is subscribed, so Close has a flush to wait for
	require.NoError(t, c.bus.SetDelay("node0", 2*time.Second))

	status := make(chan int, 1)
	go func() {
		_, resp, err := websocket.Dial(bg, wsURL(n.srv)+"/ws?user=late", nil)
		if err == nil || resp == nil {
			status <- 0
			return
		}
		status <- resp.StatusCode
	}()
	<-entered
	closed := make(chan error, 1)
	go func() { closed <- n.hub.Close(bg) }()
	waitFlushing(t, n)
	close(release)
	assert.Equal(t, http.StatusServiceUnavailable, <-status)
	require.NoError(t, <-closed)
	assert.EqualValues(t, 1, connects.Load(), "OnConnect ran for the first session only")
}

// waitFlushing waits until n's Close has started its flush.
func waitFlushing(t *testing.T, n *node) {
	t.Helper()
	require.Eventually(t, func() bool {
		n.hub.mu.RLock()
		defer n.hub.mu.RUnlock()
		return len(n.hub.flushes) > 0
	}, waitFor, time.Millisecond, "Close did not start its flush")
}
