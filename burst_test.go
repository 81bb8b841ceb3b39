package wshub

import (
	"context"
	"fmt"
	"net/http/httptest"
	"testing"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A burst of small broadcasts published back to back reaches every client
// of a room, all of it and in order, with the default options: the send
// queue is bounded by bytes, and a burst of 1,000 messages of 64 bytes is
// far within them (a bound of 256 messages held 16 KB of them).
func TestBurstReachesEveryClientWithTheDefaults(t *testing.T) {
	const clients, burst, size = 200, 1000, 64
	c := newCluster(t, 1, func(_ int, o *Options) {
		o.OnConnect = func(ctx context.Context, s *Session) error { return s.Join(ctx, "burst") }
	})
	n := c.nodes[0]
	payload := func(i int) string { return fmt.Sprintf("%0*d", size, i) }

	// Each client reads the burst and reports the first thing that is
	// wrong with it, or nil once it has all of it.
	results := make(chan error, clients)
	// 200,000 deliveries under the race detector on a busy machine: a
	// guard far above what a healthy run takes.
	ctx, cancel := context.WithTimeout(bg, 6*waitFor)
	defer cancel()
	for i := 0; i < clients; i++ {
		user := fmt.Sprint("u", i)
		conn, _, err := websocket.Dial(ctx, wsURL(n.srv)+"/ws?user="+user, nil)
		require.NoError(t, err)
		t.Cleanup(func() { _ = conn.CloseNow() })
		go func() {
			for j := 0; j < burst; j++ {
				_, data, err := conn.Read(ctx)
				if err != nil {
					results <- fmt.Errorf("%s after %d messages: %w", user, j, err)
					return
				}
				if string(data) != payload(j) {
					results <- fmt.Errorf("%s: message %d is %q", user, j, data)
					return
				}
			}
			results <- nil
		}()
	}
	// OnConnect joined each session before its handshake completed.
	require.Equal(t, clients, n.hub.Stats().Sessions)

	for i := 0; i < burst; i++ {
		require.NoError(t, n.hub.Broadcast(bg, "burst", Text(payload(i))))
	}
	failed, closed := 0, 0
	for i := 0; i < clients; i++ {
		if err := <-results; err != nil {
			failed++
			if CloseStatus(err) != -1 {
				closed++
			}
			if failed <= 3 {
				t.Error(err)
			}
		}
	}
	assert.Zero(t, failed, "clients that did not get all %d messages in order", burst)
	assert.Zero(t, closed, "clients closed during the burst")
	st := n.hub.Stats()
	assert.Zero(t, st.SlowClosed)
	assert.Zero(t, st.Dropped)
	assert.Equal(t, clients, st.Sessions)
	assert.EqualValues(t, clients*burst, st.Delivered)
}

// The default queue holds such a burst by itself, whatever the writer
// manages to send meanwhile; empty messages are bounded by bytes too.
func TestDefaultQueueHoldsABurst(t *testing.T) {
	h, err := New(&Options{Logger: quiet})
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.Close(bg) })
	s := h.newSession(httptest.NewRequest("GET", "/", nil), "u")
	t.Cleanup(s.abandon)
	msg := Text(fmt.Sprintf("%064d", 0))
	for i := 0; i < 1000; i++ {
		require.NoError(t, s.Send(msg), "message %d", i) // no socket yet: all of it stays queued
	}
	assert.Equal(t, 1000, len(s.q.msgs))
	assert.Zero(t, h.Stats().SlowClosed)

	o := h.opts
	assert.Equal(t, 4<<20, o.SendQueueBytes)
	assert.Equal(t, o.SendQueueBytes/queuedOverhead, o.SendQueueLen, "the count never bites before the bytes")
	e, err := New(&Options{Logger: quiet, SendQueueLen: 1 << 20, SendQueueBytes: 1 << 20, SlowPolicy: SlowDropOldest})
	require.NoError(t, err)
	t.Cleanup(func() { _ = e.Close(bg) })
	s = e.newSession(httptest.NewRequest("GET", "/", nil), "u")
	t.Cleanup(s.abandon)
	for i := 0; i < 20000; i++ {
		require.NoError(t, s.Send(Binary(nil)))
	}
	assert.Equal(t, 1<<20/queuedOverhead+1, len(s.q.msgs), "empty messages count against the byte bound")
	assert.EqualValues(t, 20000-len(s.q.msgs), e.Stats().Dropped)
}
