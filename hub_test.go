package wshub

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/backplane/memory"
)

func TestUpgradeRefusals(t *testing.T) {
	c := newCluster(t, 1, func(i int, o *Options) { o.AllowedOrigins = []string{"trusted.example"} })
	url := wsURL(c.nodes[0].srv)
	tests := []struct {
		name   string
		user   string
		origin string
		want   int
	}{
		{"failed authentication", "deny", "", http.StatusUnauthorized},
		{"cross origin", "u", "http://evil.example", http.StatusForbidden},
		{"allowed origin", "u", "http://trusted.example", http.StatusSwitchingProtocols},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			if tt.origin != "" {
				h.Set("Origin", tt.origin)
			}
			conn, resp, err := websocket.Dial(bg, url+"?user="+tt.user, &websocket.DialOptions{HTTPHeader: h})
			require.NotNil(t, resp)
			assert.Equal(t, tt.want, resp.StatusCode)
			if tt.want == http.StatusSwitchingProtocols {
				require.NoError(t, err)
				_ = conn.Close(websocket.StatusNormalClosure, "")
			} else {
				require.Error(t, err)
			}
		})
	}
	require.Eventually(t, func() bool { return c.nodes[0].hub.Stats().Sessions == 0 }, waitFor, time.Millisecond)

	resp, err := http.Get(c.nodes[0].srv.URL)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusUpgradeRequired, resp.StatusCode, "plain HTTP request")
}

func TestOversizedInboundMessageCloses1009(t *testing.T) {
	got := make(chan int, 2)
	c := newCluster(t, 1, func(i int, o *Options) {
		o.ReadLimit = 1024
		o.OnMessage = func(_ context.Context, _ *Session, m Message) { got <- len(m.Data) }
	})
	cl := dial(t, c.nodes[0], "u")
	require.NoError(t, cl.conn.Write(bg, websocket.MessageBinary, make([]byte, 1024)))
	_ = cl.conn.Write(bg, websocket.MessageBinary, make([]byte, 1025))
	assert.Equal(t, StatusMessageTooBig, cl.closed())
	require.Len(t, got, 1, "a message of exactly ReadLimit bytes is accepted, a larger one is not")
	assert.Equal(t, 1024, <-got)
}

func TestPartitionedNodeMissesMessagesAndRecovers(t *testing.T) {
	events := make(chan backplane.Event, 10)
	c := newCluster(t, 2, func(i int, o *Options) {
		if i == 1 {
			o.OnBackplaneEvent = func(e backplane.Event) { events <- e }
		}
	})
	cl := dial(t, c.nodes[1], "u")
	require.NoError(t, c.bus.Partition("node1"))
	require.Equal(t, backplane.EventDown, (<-events).Kind)

	require.NoError(t, c.nodes[0].hub.Send(bg, "u", Text("lost")))
	err := c.nodes[1].hub.Send(bg, "u", Text("cannot leave"))
	require.ErrorIs(t, err, backplane.ErrUnavailable)
	require.ErrorIs(t, c.nodes[1].hub.Health(), backplane.ErrUnavailable)
	require.NoError(t, c.nodes[0].hub.Health())

	require.NoError(t, c.bus.Heal("node1"))
	e := <-events
	require.NoError(t, c.nodes[1].hub.Health())
	assert.Equal(t, backplane.EventRestored, e.Kind)
	assert.True(t, e.Gap)
	require.NoError(t, c.nodes[0].hub.Send(bg, "u", Text("after heal")))
	assert.Equal(t, "after heal", cl.nextText())
	st := c.nodes[1].hub.Stats()
	assert.EqualValues(t, 1, st.BackplaneDowns)
	assert.EqualValues(t, 1, st.BackplaneGaps)
}

func TestCloseIsGracefulAndLeavesNothingBehind(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	var disconnects sync.WaitGroup
	disconnects.Add(2)
	bpHub, err := New(&Options{
		Authenticate: userFromQuery,
		OnDisconnect: func(*Session, error) { disconnects.Done() },
	})
	require.NoError(t, err)
	srv := newServer(t, bpHub)
	defer srv.Close()
	n := &node{hub: bpHub, srv: srv}
	a := dial(t, n, "a")
	b := dialNoRead(t, n, "b")
	for i := 0; i < 100; i++ {
		require.NoError(t, bpHub.Send(bg, "a", Text(fmt.Sprint(i))))
	}
	b.startReading()

	require.NoError(t, bpHub.Close(bg))
	for i := 0; i < 100; i++ {
		require.Equal(t, fmt.Sprint(i), a.nextText(), "queued messages are flushed before the close")
	}
	assert.Equal(t, StatusGoingAway, a.closed())
	assert.Equal(t, StatusGoingAway, b.closed())
	disconnects.Wait()
	assert.Zero(t, bpHub.Stats().Sessions)

	// Closed: no upgrades, every call refused, Close again is fine.
	_, resp, err := websocket.Dial(bg, wsURL(srv)+"?user=a", nil)
	require.Error(t, err)
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	assert.ErrorIs(t, bpHub.Send(bg, "a", Text("x")), ErrClosed)
	assert.ErrorIs(t, bpHub.Broadcast(bg, "t", Text("x")), ErrClosed)
	assert.NoError(t, bpHub.Close(bg))
}

func TestCloseWithExpiredContextForcesConnectionsShut(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	h, err := New(&Options{Authenticate: userFromQuery})
	require.NoError(t, err)
	srv := newServer(t, h)
	defer srv.Close()
	// A client that never reads never completes the close handshake.
	dialNoRead(t, &node{hub: h, srv: srv}, "stuck")
	ctx, cancel := context.WithCancel(bg)
	cancel()
	err = h.Close(ctx)
	assert.ErrorIs(t, err, context.Canceled)
	assert.Zero(t, h.Stats().Sessions)
}

func TestBadInput(t *testing.T) {
	c := newCluster(t, 1, func(i int, o *Options) { o.MaxMessageSize = 16 })
	h := c.nodes[0].hub
	var sess *Session
	ready := make(chan struct{})
	h.opts.OnConnect = func(_ context.Context, s *Session) error { sess = s; close(ready); return nil }
	cl := dial(t, c.nodes[0], "u")
	<-ready

	long := strings.Repeat("x", MaxNameLength+1)
	ok := Text("ok")
	tests := []struct {
		name string
		err  error
		want error
	}{
		{"Send empty user", h.Send(bg, "", ok), ErrInvalidUserID},
		{"Send long user", h.Send(bg, long, ok), ErrInvalidUserID},
		{"Send zero message", h.Send(bg, "u", Message{}), ErrInvalidMessage},
		{"Send bad type", h.Send(bg, "u", Message{Type: 9, Data: []byte("x")}), ErrInvalidMessage},
		{"Send invalid UTF-8", h.Send(bg, "u", Message{Type: MessageText, Data: []byte{0xff}}), ErrInvalidMessage},
		{"Send too large", h.Send(bg, "u", Binary(make([]byte, 17))), ErrMessageTooLarge},
		{"Broadcast empty topic", h.Broadcast(bg, "", ok), ErrInvalidTopic},
		{"Broadcast long topic", h.Broadcast(bg, long, ok), ErrInvalidTopic},
		{"Broadcast zero message", h.Broadcast(bg, "t", Message{}), ErrInvalidMessage},
		{"SendSession empty", h.SendSession(bg, "", ok), ErrInvalidSessionID},
		{"SendSession no node", h.SendSession(bg, "abc", ok), ErrInvalidSessionID},
		{"SendSession zero message", h.SendSession(bg, "n.1", Message{}), ErrInvalidMessage},
		{"Join empty user", h.Join(bg, "", "t"), ErrInvalidUserID},
		{"Join empty topic", h.Join(bg, "u", ""), ErrInvalidTopic},
		{"Leave long topic", h.Leave(bg, "u", long), ErrInvalidTopic},
		{"Disconnect empty user", h.Disconnect(bg, "", StatusNormalClosure, ""), ErrInvalidUserID},
		{"Disconnect reserved code", h.Disconnect(bg, "u", 1005, ""), ErrInvalidCloseStatus},
		{"Disconnect long reason", h.Disconnect(bg, "u", 4000, strings.Repeat("r", 124)), ErrInvalidCloseStatus},
		{"Session.Join empty", sess.Join(bg, ""), ErrInvalidTopic},
		{"Session.Leave long", sess.Leave(long), ErrInvalidTopic},
		{"Session.Send zero", sess.Send(Message{}), ErrInvalidMessage},
		{"Session.Send too large", sess.Send(Text(strings.Repeat("x", 17))), ErrMessageTooLarge},
		{"Session.Close bad code", sess.Close(999, ""), ErrInvalidCloseStatus},
		{"Send canceled", h.Send(canceledCtx(), "u", ok), context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Error(t, tt.err)
			assert.ErrorIs(t, tt.err, tt.want)
			assert.True(t, strings.HasPrefix(tt.err.Error(), "wshub: ") || errors.Is(tt.err, context.Canceled), tt.err.Error())
		})
	}

	// Nothing was lost or broken by all of that.
	require.NoError(t, h.Send(bg, "u", ok))
	require.NoError(t, sess.Send(Text("direct")))
	// Send travels through the backplane, Session.Send does not: any order.
	assert.ElementsMatch(t, []string{"ok", "direct"}, []string{cl.nextText(), cl.nextText()})

	// A closing session refuses what needs it open.
	require.NoError(t, sess.Close(StatusNormalClosure, "done"))
	require.Eventually(t, func() bool { return errors.Is(sess.Send(ok), ErrSessionClosed) }, waitFor, time.Millisecond)
	assert.ErrorIs(t, sess.Join(bg, "t"), ErrSessionClosed)
}

func TestOptionsValidation(t *testing.T) {
	tests := []struct {
		name string
		o    Options
	}{
		{"node id with dot", Options{NodeID: "a.b"}},
		{"negative read limit", Options{ReadLimit: -1}},
		{"queue bytes below message size", Options{SendQueueBytes: 10, MaxMessageSize: 20}},
		{"unknown policy", Options{SlowPolicy: 7}},
		{"negative write timeout", Options{WriteTimeout: -time.Second}},
		{"bad origin pattern", Options{AllowedOrigins: []string{"["}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(&tt.o)
			assert.ErrorIs(t, err, ErrInvalidOptions)
		})
	}
	h, err := New(nil)
	require.NoError(t, err)
	assert.NotEmpty(t, h.NodeID())
	require.NoError(t, h.Close(bg))
}

func canceledCtx() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

func TestPeerThatStopsAnsweringPingsIsDisconnected(t *testing.T) {
	gone := make(chan error, 1)
	c := newCluster(t, 1, func(i int, o *Options) {
		o.PingInterval = 20 * time.Millisecond
		o.WriteTimeout = 200 * time.Millisecond
		o.OnDisconnect = func(_ *Session, err error) { gone <- err }
	})
	// A client that never reads never answers a ping.
	dialNoRead(t, c.nodes[0], "mute")
	select {
	case <-gone:
	case <-time.After(waitFor):
		t.Fatal("a peer that does not answer pings stayed connected")
	}
	assert.Zero(t, c.nodes[0].hub.Stats().Sessions)
}

func TestOnConnectErrorClosesWithPolicyViolation(t *testing.T) {
	c := newCluster(t, 1, func(i int, o *Options) {
		o.OnConnect = func(ctx context.Context, s *Session) error {
			if s.UserID() == "banned" {
				return errors.New("banned: " + strings.Repeat("ü", 100))
			}
			return nil
		}
	})
	cl := dial(t, c.nodes[0], "banned")
	assert.Equal(t, StatusPolicyViolation, cl.closed())
	var ce websocket.CloseError
	require.ErrorAs(t, cl.err, &ce)
	assert.True(t, strings.HasPrefix(ce.Reason, "banned: "))
	assert.LessOrEqual(t, len(ce.Reason), 123)
}

func TestSessionTopicsAndInTopic(t *testing.T) {
	var log sessionLog
	c := newCluster(t, 1, func(i int, o *Options) { o.OnConnect = log.hook })
	dial(t, c.nodes[0], "u")
	s := log.get(t, "u", 0)
	require.NoError(t, s.Join(bg, "b"))
	require.NoError(t, s.Join(bg, "a"))
	require.NoError(t, s.Join(bg, "a"), "joining twice is not an error")
	assert.Equal(t, []string{"a", "b"}, s.Topics())
	assert.True(t, s.InTopic("a"))
	require.NoError(t, s.Leave("a"))
	require.NoError(t, s.Leave("never"), "leaving a topic one is not in is not an error")
	assert.False(t, s.InTopic("a"))
	assert.Equal(t, []string{"b"}, s.Topics())
	assert.Same(t, c.nodes[0].hub, s.Hub())
}

// slowSubscribe is a memory node whose Subscribe takes effect only after a
// pause, like a remote broker: a Join that did not wait for it would miss
// what is broadcast at once.
type slowSubscribe struct{ *memory.Node }

func (b slowSubscribe) Subscribe(ctx context.Context, chs ...string) error {
	time.Sleep(20 * time.Millisecond)
	return b.Node.Subscribe(ctx, chs...)
}

func TestWhatOnConnectSetsUpIsInPlaceWhenTheClientIsConnected(t *testing.T) {
	c := newCluster(t, 2, func(i int, o *Options) {
		if i == 0 {
			o.Backplane = slowSubscribe{o.Backplane.(*memory.Node)}
		}
		o.OnConnect = func(ctx context.Context, s *Session) error {
			if err := s.Send(Text("welcome")); err != nil {
				return err
			}
			return s.Join(ctx, "room-"+s.UserID()) // a new topic each time
		}
	})
	for i := 0; i < 20; i++ {
		user := fmt.Sprint("u", i)
		cl := dial(t, c.nodes[0], user)
		// No waiting: the join happened before the handshake completed.
		require.NoError(t, c.nodes[1].hub.Broadcast(bg, "room-"+user, Text(fmt.Sprint("b", i))))
		assert.Equal(t, "welcome", cl.nextText())
		assert.Equal(t, fmt.Sprint("b", i), cl.nextText())
	}
}
