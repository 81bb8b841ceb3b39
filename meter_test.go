package wshub

import (
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/backplane/memory"
	"github.com/wshub/wshub/internal/envelope"
)

// Metrics follows what real clients send and receive: gauges of what the
// node holds, messages and bytes both ways, both latencies, and the send
// queues.
func TestMetricsFollowTraffic(t *testing.T) {
	c := newCluster(t, 1, func(_ int, o *Options) {
		o.OnConnect = func(ctx context.Context, s *Session) error { return s.Join(ctx, "room") }
	})
	n := c.nodes[0]
	h := n.hub
	alice1, alice2, bob := dial(t, n, "alice"), dial(t, n, "alice"), dial(t, n, "bob")
	m := h.Metrics()
	assert.Equal(t, 3, m.Sessions)
	assert.Equal(t, 2, m.Users)
	assert.Equal(t, 1, m.Topics)
	assert.True(t, m.BackplaneUp)
	assert.Zero(t, m.PublishToEnqueue.Count)
	assert.Zero(t, m.EnqueueToWrite.Count)

	for i := 0; i < 3; i++ {
		require.NoError(t, alice1.conn.Write(bg, websocket.MessageText, []byte("hello")))
	}
	require.Eventually(t, func() bool { return h.Metrics().Received == 3 }, waitFor, time.Millisecond)
	assert.EqualValues(t, 15, h.Metrics().BytesReceived)

	require.NoError(t, h.Broadcast(bg, "room", Text(strings.Repeat("b", 10))))
	for _, cl := range []*client{alice1, alice2, bob} {
		assert.Equal(t, strings.Repeat("b", 10), cl.nextText())
	}
	require.NoError(t, h.Send(bg, "alice", Binary([]byte{1, 2, 3, 4})))
	alice1.next()
	alice2.next()
	require.Eventually(t, func() bool { return h.Metrics().Written == 5 }, waitFor, time.Millisecond)

	m = h.Metrics()
	assert.EqualValues(t, 5, m.Delivered)
	assert.EqualValues(t, 3*10+2*4, m.BytesWritten)
	assert.EqualValues(t, 2, m.PublishToEnqueue.Count, "once per message from the backplane, whatever the recipients")
	assert.EqualValues(t, 5, m.EnqueueToWrite.Count, "once per batch: each message went alone")
	assert.Less(t, m.PublishToEnqueue.Sum, float64(waitFor/time.Second))
	assert.Greater(t, m.EnqueueToWrite.Sum, 0.0)
	for _, hist := range []Histogram{m.PublishToEnqueue, m.EnqueueToWrite, m.SendQueues} {
		var sum uint64
		for _, n := range hist.Counts {
			sum += n
		}
		assert.Equal(t, hist.Count, sum)
		assert.Len(t, hist.Counts, len(hist.Bounds)+1)
	}
	assert.EqualValues(t, 3, m.SendQueues.Count, "one per session")
	assert.EqualValues(t, 3, m.SendQueues.Counts[0], "every queue is empty")
	assert.Zero(t, m.SendQueues.Sum)
	assert.Zero(t, m.QueuedBytes)
	assert.Zero(t, m.PublishErrors)
}

// The send queues are measured when Metrics is called: sessions with no
// socket keep what is queued to them.
func TestMetricsMeasureSendQueues(t *testing.T) {
	h, err := New(&Options{Logger: quiet})
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.Close(bg) })
	r := httptest.NewRequest("GET", "/", nil)
	for i, queued := range []int{0, 0, 1, 3, 4, 20, 300} {
		s := h.newSession(r, "u"+string(rune('a'+i)))
		require.NoError(t, h.register(bg, s))
		t.Cleanup(func() { h.reg.remove(s) })
		for j := 0; j < queued; j++ {
			require.NoError(t, s.Send(Text("xy")))
		}
	}
	m := h.Metrics()
	assert.EqualValues(t, 7, m.SendQueues.Count)
	assert.Equal(t, sendQueueBounds[:], m.SendQueues.Bounds)
	//                       0  ≤3 ≤15 ≤63 ≤255 ≤1023 ...
	assert.Equal(t, []uint64{2, 2, 1, 1, 0, 1, 0, 0, 0}, m.SendQueues.Counts)
	assert.EqualValues(t, 328, m.SendQueues.Sum)
	assert.EqualValues(t, 328*(2+queuedOverhead), m.QueuedBytes)
	assert.Equal(t, 300, m.LongestQueue)
	assert.Equal(t, 7, m.Users)
}

// Every session that ends is counted once, under the first reason of
// Closes that applies.
func TestClosesByReason(t *testing.T) {
	tests := []struct {
		name  string
		tweak func(o *Options)
		// run makes the session of user "u" on n end.
		run  func(t *testing.T, n *node)
		want func(c *Closes) *uint64
	}{
		{"client closes normally", nil, func(t *testing.T, n *node) {
			cl := dial(t, n, "u")
			require.NoError(t, cl.conn.Close(websocket.StatusNormalClosure, "bye"))
		}, func(c *Closes) *uint64 { return &c.Normal }},
		{"client goes away", nil, func(t *testing.T, n *node) {
			cl := dial(t, n, "u")
			require.NoError(t, cl.conn.Close(websocket.StatusGoingAway, ""))
		}, func(c *Closes) *uint64 { return &c.Normal }},
		{"client closes with an application status", nil, func(t *testing.T, n *node) {
			cl := dial(t, n, "u")
			require.NoError(t, cl.conn.Close(4000, "logged out"))
		}, func(c *Closes) *uint64 { return &c.Normal }},
		{"client closes with an error status", nil, func(t *testing.T, n *node) {
			cl := dial(t, n, "u")
			require.NoError(t, cl.conn.Close(websocket.StatusProtocolError, ""))
		}, func(c *Closes) *uint64 { return &c.Error }},
		{"connection dropped", nil, func(t *testing.T, n *node) {
			cl := dial(t, n, "u")
			require.NoError(t, cl.conn.CloseNow())
		}, func(c *Closes) *uint64 { return &c.Error }},
		{"hook panics", func(o *Options) {
			o.OnMessage = func(context.Context, *Session, Message) { panic("bug") }
		}, func(t *testing.T, n *node) {
			cl := dial(t, n, "u")
			require.NoError(t, cl.conn.Write(bg, websocket.MessageText, []byte("boom")))
			assert.Equal(t, StatusInternalError, cl.closed())
		}, func(c *Closes) *uint64 { return &c.Error }},
		{"Session.Close", nil, func(t *testing.T, n *node) {
			cl := dial(t, n, "u")
			require.NoError(t, n.sessions("u")[0].Close(4001, "kicked"))
			assert.EqualValues(t, 4001, cl.closed())
		}, func(c *Closes) *uint64 { return &c.App }},
		{"Disconnect", nil, func(t *testing.T, n *node) {
			cl := dial(t, n, "u")
			require.NoError(t, n.hub.Disconnect(bg, "u", StatusNormalClosure, "logged out"))
			assert.Equal(t, StatusNormalClosure, cl.closed())
		}, func(c *Closes) *uint64 { return &c.App }},
		{"OnConnect error", func(o *Options) {
			o.OnConnect = func(context.Context, *Session) error { return errors.New("banned") }
		}, func(t *testing.T, n *node) {
			assert.Equal(t, StatusPolicyViolation, dial(t, n, "u").closed())
		}, func(c *Closes) *uint64 { return &c.App }},
		{"service restart", nil, func(t *testing.T, n *node) {
			cl := dial(t, n, "u")
			require.NoError(t, n.sessions("u")[0].Close(1012, "service restart"))
			assert.EqualValues(t, 1012, cl.closed())
		}, func(c *Closes) *uint64 { return &c.Shutdown }},
		{"invalid text", nil, func(t *testing.T, n *node) {
			cl := dial(t, n, "u")
			require.NoError(t, cl.conn.Write(bg, websocket.MessageText, []byte("bad \xff")))
			assert.Equal(t, StatusInvalidFramePayloadData, cl.closed())
		}, func(c *Closes) *uint64 { return &c.InvalidText }},
		{"rate limit", func(o *Options) {
			o.Limits = floodLimits(RateClose)
		}, func(t *testing.T, n *node) {
			flooder := dialRaw(t, n.srv.Listener.Addr().String(), "u", nil, waitFor)
			_, err := flooder.conn.Write(repeatFrame(40, true, wsOpPing, nil)) // twice the burst
			require.NoError(t, err)
			code, _ := flooder.closeStatus()
			assert.Equal(t, StatusPolicyViolation, code)
			_ = flooder.conn.Close() // rather than answer the close
		}, func(c *Closes) *uint64 { return &c.RateLimit }},
		{"queue full", func(o *Options) {
			o.SlowPolicy = SlowClose
			o.SendQueueLen = 8
			o.SocketWriteBuffer = 8 << 10
			o.WriteTimeout = 300 * time.Millisecond
		}, func(t *testing.T, n *node) {
			cl := dialSmall(t, n, "u", func(c net.Conn) net.Conn { return c }) // never read
			flood(t, n, 16<<10, func() bool { return n.hub.Stats().SlowClosed > 0 })
			_ = cl.CloseNow() // rather than wait for the close handshake to time out
		}, func(c *Closes) *uint64 { return &c.SlowQueueFull }},
		{"write timeout", func(o *Options) {
			o.SlowPolicy = SlowDropOldest
			o.SendQueueLen = 8
			o.SocketWriteBuffer = 8 << 10
			o.WriteTimeout = 300 * time.Millisecond
		}, func(t *testing.T, n *node) {
			dialSmall(t, n, "u", func(c net.Conn) net.Conn { return c }) // never read
			flood(t, n, 16<<10, func() bool { return n.hub.Stats().Sessions == 0 })
		}, func(c *Closes) *uint64 { return &c.SlowWriteTimeout }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCluster(t, 1, func(_ int, o *Options) {
				if tt.tweak != nil {
					tt.tweak(o)
				}
			})
			n := c.nodes[0]
			n.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
			tt.run(t, n)
			var want Closes
			*tt.want(&want) = 1
			require.Eventually(t, func() bool { return n.hub.Metrics().Closed != Closes{} }, waitFor, time.Millisecond)
			time.Sleep(10 * time.Millisecond) // nothing else may be counted: a late second count would show
			assert.Equal(t, want, n.hub.Metrics().Closed)
			assert.Zero(t, n.hub.Metrics().Sessions)
		})
	}
}

// flood sends messages of size bytes to user "u" of n until done, within
// waitFor.
func flood(t *testing.T, n *node, size int, done func() bool) {
	t.Helper()
	msg := Binary(make([]byte, size))
	require.Eventually(t, func() bool {
		for i := 0; i < 64; i++ {
			_ = n.hub.Send(bg, "u", msg)
		}
		return done()
	}, waitFor, 10*time.Millisecond, "the session was never closed as slow")
}

// The sessions that Close ends are counted as shut down.
func TestClosesCountShutdown(t *testing.T) {
	h, err := New(&Options{Logger: quiet, Authenticate: userFromQuery})
	require.NoError(t, err)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	nd := &node{hub: h, srv: srv}
	a, b := dial(t, nd, "a"), dial(t, nd, "b")
	require.NoError(t, h.Close(bg))
	assert.Equal(t, StatusGoingAway, a.closed())
	assert.Equal(t, StatusGoingAway, b.closed())
	m := h.Metrics()
	assert.Equal(t, Closes{Shutdown: 2}, m.Closed)
	assert.EqualValues(t, 2, m.Accepted)
	assert.False(t, m.BackplaneUp, "the hub's own backplane is closed")
}

// A publish the backplane refuses is counted; the backplane's link going
// down and coming back shows in BackplaneUp.
func TestMetricsOfTheBackplane(t *testing.T) {
	c := newCluster(t, 1, nil)
	n := c.nodes[0]
	require.NoError(t, c.bus.Partition("node0"))
	require.Eventually(t, func() bool { return !n.hub.Metrics().BackplaneUp }, waitFor, time.Millisecond)
	assert.Error(t, n.hub.Send(bg, "u", Text("lost")))
	assert.EqualValues(t, 1, n.hub.Metrics().PublishErrors)
	require.NoError(t, c.bus.Heal("node0"))
	require.Eventually(t, func() bool { return n.hub.Metrics().BackplaneUp }, waitFor, time.Millisecond)
}

// Every message a hub publishes carries its publish time; control messages
// do not need one. A receiver observes only what carries it.
func TestPublishTimeIsCarried(t *testing.T) {
	bus := newCluster(t, 1, nil).bus
	spy, err := bus.NewNode("spy")
	require.NoError(t, err)
	got := make(chan envelope.Envelope, 16)
	require.NoError(t, spy.Start(func(m backplane.Message) {
		e, err := envelope.Decode(m.Payload)
		if err == nil {
			got <- e
		}
	}))
	t.Cleanup(func() { _ = spy.Close() })
	require.NoError(t, spy.Subscribe(bg, "u:u", "t:t", "n:x"))

	h, err := New(&Options{Logger: quiet, Backplane: mustNode(t, bus, "sender")})
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.Close(bg) })
	before := uint64(time.Now().UnixMicro())
	require.NoError(t, h.Send(bg, "u", Text("a")))
	require.NoError(t, h.Broadcast(bg, "t", Text("b")))
	require.NoError(t, h.SendSession(bg, "x.1", Text("c")))
	require.NoError(t, h.Join(bg, "u", "room"))
	after := uint64(time.Now().UnixMicro())
	for _, op := range []envelope.Op{envelope.OpUser, envelope.OpTopic, envelope.OpSession, envelope.OpJoin} {
		select {
		case e := <-got:
			require.Equal(t, op, e.Op)
			if op == envelope.OpJoin {
				assert.Zero(t, e.Published)
				continue
			}
			assert.GreaterOrEqual(t, e.Published, before)
			assert.LessOrEqual(t, e.Published, after)
		case <-time.After(waitFor):
			t.Fatal("nothing published")
		}
	}

	// A message without the time (from a hub that predates it) is
	// delivered and not observed.
	s := h.newSession(httptest.NewRequest("GET", "/", nil), "v")
	require.NoError(t, h.register(bg, s))
	t.Cleanup(func() { h.reg.remove(s) })
	h.receive(backplane.Message{Channel: "u:v", Payload: (&envelope.Envelope{Op: envelope.OpUser, Target: "v", Payload: []byte("old")}).Encode()})
	old := (&envelope.Envelope{Op: envelope.OpUser, Target: "v", Published: uint64(time.Now().Add(-time.Second).UnixMicro()), Payload: []byte("1s")}).Encode()
	h.receive(backplane.Message{Channel: "u:v", Payload: old})
	m := h.Metrics()
	assert.EqualValues(t, 2, m.Delivered)
	assert.EqualValues(t, 1, m.PublishToEnqueue.Count)
	assert.InDelta(t, 1, m.PublishToEnqueue.Sum, 0.5)
}

func mustNode(t *testing.T, bus *memory.Bus, name string) *memory.Node {
	t.Helper()
	n, err := bus.NewNode(name)
	require.NoError(t, err)
	t.Cleanup(func() { _ = n.Close() })
	return n
}

// The latency histogram puts each value in the first bucket whose bound is
// at least the value, clamps what is out of range, and sums in seconds.
func TestLatencyBuckets(t *testing.T) {
	var l latency
	for _, d := range []time.Duration{-time.Second, 0, 25 * time.Microsecond, 26 * time.Microsecond, time.Millisecond, 10 * time.Second, 11 * time.Second, 1000 * time.Hour} {
		l.observe(d)
	}
	h := l.snapshot()
	want := make([]uint64, len(latencyBounds)+1)
	want[0] = 3 // -1s, 0, 25µs
	want[1] = 1 // 26µs ≤ 50µs
	want[5] = 1 // 1ms
	want[len(latencyBounds)-1] = 1
	want[len(latencyBounds)] = 2
	assert.Equal(t, want, h.Counts)
	assert.EqualValues(t, 8, h.Count)
	assert.InDelta(t, 0.000025+0.000026+0.001+10+11+3600, h.Sum, 1e-6)
}

// The measures add no allocation to the paths they sit on.
func TestMetersAllocateNothing(t *testing.T) {
	h, err := New(&Options{Logger: quiet})
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.Close(bg) })
	e := envelope.Envelope{Op: envelope.OpTopic, Published: uint64(time.Now().UnixMicro())}
	s := h.newSession(httptest.NewRequest("GET", "/", nil), "u")
	assert.Zero(t, testing.AllocsPerRun(1000, func() {
		stampPublish(&e)
		h.delivered(&e, 3)
		h.meters.enqueueToWrite.observe(time.Millisecond)
		s.markQueued()
	}))
}

// BenchmarkHubMetrics measures a snapshot of a hub of 10,000 sessions, as a
// scrape takes it.
func BenchmarkHubMetrics(b *testing.B) {
	h, sessions := benchHub(b, 10000)
	for i, s := range sessions {
		for j := 0; j < i%5; j++ {
			_ = s.Send(Text("x"))
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_ = h.Metrics()
	}
}

// BenchmarkMeterHooks measures what each hook adds to the path it sits on:
// per publish (the publish time), per message received from the backplane
// (publish-to-enqueue), per message queued to an empty queue (its time) and
// per batch written (counts and write latency).
func BenchmarkMeterHooks(b *testing.B) {
	h, sessions := benchHub(b, 1)
	s := sessions[0]
	e := envelope.Envelope{Op: envelope.OpTopic}
	b.Run("publish", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			stampPublish(&e)
		}
	})
	b.Run("receive", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			h.delivered(&e, 1)
		}
	})
	b.Run("enqueue", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			s.markQueued()
		}
	})
	b.Run("write", func(b *testing.B) {
		b.ReportAllocs()
		m := &h.meters
		for i := 0; i < b.N; i++ {
			m.written.Add(1)
			m.bytesOut.Add(64)
			m.enqueueToWrite.observe(time.Duration(monotonic() - s.meter.batchAt))
		}
	})
}
