package wshub

import (
	"bytes"
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
	"github.com/wshub/wshub/internal/envelope"
)

func testSendReachesEveryNodeOfTheUserAndNobodyElse(t *testing.T, newCluster clusterMaker) {
	c := newCluster(t, 3, nil)
	a, b, cc := c.nodes[0], c.nodes[1], c.nodes[2]
	aliceA := dial(t, a, "alice")
	aliceB := dial(t, b, "alice")
	bobA := dial(t, a, "bob")
	carolC := dial(t, cc, "carol")

	require.NoError(t, cc.hub.Send(bg, "alice", Text("hello alice")))
	assert.Equal(t, "hello alice", aliceA.nextText())
	assert.Equal(t, "hello alice", aliceB.nextText())

	// bob and carol get the marker first: the message to alice never reached them.
	require.NoError(t, cc.hub.Send(bg, "bob", Text("marker")))
	require.NoError(t, cc.hub.Send(bg, "carol", Text("marker")))
	assert.Equal(t, "marker", bobA.nextText())
	assert.Equal(t, "marker", carolC.nextText())

	// A user with no session anywhere is not an error.
	require.NoError(t, a.hub.Send(bg, "nobody", Text("x")))
}

func testMessagesArriveByteForByte(t *testing.T, newCluster clusterMaker) {
	c := newCluster(t, 2, nil)
	cl := dial(t, c.nodes[0], "u")
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	msgs := []Message{
		Text(""),
		Text("héllo ✓"),
		Binary([]byte{}),
		Binary(all),
		Binary(bytes.Repeat([]byte{0xAB}, 1<<20)),
	}
	for _, m := range msgs {
		require.NoError(t, c.nodes[1].hub.Send(bg, "u", m))
	}
	for i, want := range msgs {
		got := cl.next()
		assert.Equal(t, want.Type, got.Type, "message %d", i)
		assert.True(t, bytes.Equal(want.Data, got.Data), "message %d byte for byte", i)
	}
}

func testOrderPerPublisher(t *testing.T, newCluster clusterMaker) {
	c := newCluster(t, 3, func(i int, o *Options) { o.SendQueueLen = 2000 })
	cl := dial(t, c.nodes[0], "u")
	const n = 500
	var wg sync.WaitGroup
	for _, from := range []int{1, 2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < n; i++ {
				assert.NoError(t, c.nodes[from].hub.Send(bg, "u", Text(fmt.Sprintf("%d:%d", from, i))))
			}
		}()
	}
	wg.Wait()
	last := map[string]int{"1": -1, "2": -1}
	for i := 0; i < 2*n; i++ {
		var from string
		var seq int
		_, err := fmt.Sscanf(strings.Replace(cl.nextText(), ":", " ", 1), "%s %d", &from, &seq)
		require.NoError(t, err)
		require.Equal(t, last[from]+1, seq, "publisher %s out of order", from)
		last[from] = seq
	}
}

func testBroadcastReachesExactlyTheTopicOnAllNodes(t *testing.T, newCluster clusterMaker) {
	var log sessionLog
	c := newCluster(t, 3, func(i int, o *Options) { o.OnConnect = log.hook })
	members := []*client{dial(t, c.nodes[0], "m0"), dial(t, c.nodes[1], "m1"), dial(t, c.nodes[2], "m2")}
	outsider := dial(t, c.nodes[1], "out")
	for _, u := range []string{"m0", "m1", "m2"} {
		s := log.get(t, u, 0)
		require.NoError(t, s.Join(bg, "room"))
		assert.Equal(t, []string{"room"}, s.Topics())
	}

	require.NoError(t, c.nodes[0].hub.Broadcast(bg, "room", Text("to the room")))
	for _, m := range members {
		assert.Equal(t, "to the room", m.nextText())
	}

	// Except leaves the sender out, wherever it is.
	sender := log.get(t, "m1", 0)
	require.NoError(t, c.nodes[2].hub.Broadcast(bg, "room", Text("relayed"), Except(sender.ID())))
	require.NoError(t, c.nodes[2].hub.Broadcast(bg, "room", Text("after")))
	assert.Equal(t, "relayed", members[0].nextText())
	assert.Equal(t, "relayed", members[2].nextText())
	assert.Equal(t, "after", members[1].nextText(), "the excepted session got the relayed message")
	assert.Equal(t, "after", members[0].nextText())
	assert.Equal(t, "after", members[2].nextText())

	require.NoError(t, c.nodes[2].hub.Send(bg, "out", Text("marker")))
	assert.Equal(t, "marker", outsider.nextText(), "a non-member got a broadcast")

	// Leaving stops delivery; the node drops its interest with the last member.
	require.NoError(t, sender.Leave("room"))
	require.Eventually(t, func() bool { // the unsubscribe batch has been applied
		im := c.nodes[1].hub.interest
		im.mu.Lock()
		defer im.mu.Unlock()
		return im.chans[topicPrefix+"room"] == nil
	}, waitFor, time.Millisecond)
	before := c.nodes[1].received()
	require.NoError(t, c.nodes[0].hub.Broadcast(bg, "room", Text("without m1")))
	require.NoError(t, c.nodes[0].hub.Send(bg, "m1", Text("marker")))
	assert.Equal(t, "marker", members[1].nextText())
	assert.Equal(t, before+1, c.nodes[1].received(), "node1 still hears the topic it no longer holds")
}

func testNodeHearsOnlyWhatItHolds(t *testing.T, newCluster clusterMaker) {
	c := newCluster(t, 3, nil)
	dial(t, c.nodes[0], "alice")
	base0, base2 := c.nodes[0].received(), c.nodes[2].received()
	for i := 0; i < 10; i++ {
		require.NoError(t, c.nodes[1].hub.Send(bg, "alice", Text("x")))
	}
	if !assert.Eventually(t, func() bool {
		return c.nodes[0].received() >= base0+10
	}, waitFor, time.Millisecond) {
		t.Fatalf("node0 received %d of 10; hub stats %+v; backplane %+v", c.nodes[0].received()-base0, c.nodes[0].hub.Stats(), c.nodes[0].bp)
	}
	require.Equal(t, base0+10, c.nodes[0].received(), "node0 received more than was sent to it")
	// node2 holds nobody. A marker to its own inbox, published after the ten
	// messages, is the first thing it receives: the bus delivers to each
	// node in publishing order, so any of the ten would have come before it.
	require.NoError(t, c.nodes[1].hub.SendSession(bg, "node2.marker", Text("m")))
	var got uint64
	require.Eventually(t, func() bool {
		got = c.nodes[2].received()
		return got >= base2+1
	}, waitFor, time.Millisecond)
	assert.Equal(t, base2+1, got, "node2 received messages for a user it does not hold")
}

func testClusterJoinAndLeaveFromAnotherNode(t *testing.T, newCluster clusterMaker) {
	c := newCluster(t, 3, nil)
	aliceA := dial(t, c.nodes[0], "alice")
	aliceB := dial(t, c.nodes[1], "alice")
	bobB := dial(t, c.nodes[1], "bob")

	require.NoError(t, c.nodes[2].hub.Join(bg, "alice", "news"))
	c.waitJoined("alice", "news", true)
	require.NoError(t, c.nodes[2].hub.Broadcast(bg, "news", Text("headline")))
	assert.Equal(t, "headline", aliceA.nextText())
	assert.Equal(t, "headline", aliceB.nextText())
	require.NoError(t, c.nodes[2].hub.Send(bg, "bob", Text("marker")))
	assert.Equal(t, "marker", bobB.nextText(), "bob was not joined")

	require.NoError(t, c.nodes[2].hub.Leave(bg, "alice", "news"))
	c.waitJoined("alice", "news", false)
	assert.False(t, c.nodes[0].subscribed(topicPrefix+"news"))
	require.NoError(t, c.nodes[2].hub.Broadcast(bg, "news", Text("missed")))
	require.NoError(t, c.nodes[2].hub.Send(bg, "alice", Text("marker")))
	assert.Equal(t, "marker", aliceA.nextText())
	assert.Equal(t, "marker", aliceB.nextText())
}

func testDisconnectFromAnyNodeClosesAllSessions(t *testing.T, newCluster clusterMaker) {
	c := newCluster(t, 3, nil)
	aliceA := dial(t, c.nodes[0], "alice")
	aliceB := dial(t, c.nodes[1], "alice")
	bob := dial(t, c.nodes[1], "bob")

	require.NoError(t, c.nodes[0].hub.Send(bg, "alice", Text("last words")))
	require.NoError(t, c.nodes[2].hub.Disconnect(bg, "alice", 4001, "kicked"))
	// Queued messages are sent before the close.
	assert.Equal(t, "last words", aliceA.nextText())
	assert.Equal(t, "last words", aliceB.nextText())
	assert.Equal(t, StatusCode(4001), aliceA.closed())
	assert.Equal(t, StatusCode(4001), aliceB.closed())
	require.Eventually(t, func() bool {
		return len(c.nodes[0].sessions("alice")) == 0 && len(c.nodes[1].sessions("alice")) == 0
	}, waitFor, time.Millisecond)

	require.NoError(t, c.nodes[2].hub.Send(bg, "bob", Text("still here")))
	assert.Equal(t, "still here", bob.nextText())
}

func testSendSessionAcrossNodes(t *testing.T, newCluster clusterMaker) {
	// Each client learns its session ID from its first message.
	c := newCluster(t, 3, func(i int, o *Options) {
		o.OnConnect = func(_ context.Context, s *Session) error { return s.Send(Text(s.ID())) }
	})
	a1 := dial(t, c.nodes[0], "alice")
	a2 := dial(t, c.nodes[0], "alice")
	a1.nextText()
	second := a2.nextText()
	require.NoError(t, c.nodes[2].hub.SendSession(bg, second, Text("only you")))
	require.NoError(t, c.nodes[2].hub.Send(bg, "alice", Text("both")))
	assert.Equal(t, "both", a1.nextText())
	assert.Equal(t, "only you", a2.nextText())
	assert.Equal(t, "both", a2.nextText())

	// A session that ended is not an error.
	require.NoError(t, c.nodes[1].hub.SendSession(bg, "node0.zzz-1", Text("gone")))
}

func testEchoThroughOnMessage(t *testing.T, newCluster clusterMaker) {
	c := newCluster(t, 2, func(i int, o *Options) {
		o.OnConnect = func(ctx context.Context, s *Session) error { return s.Join(ctx, "chat") }
		o.OnMessage = func(ctx context.Context, s *Session, m Message) {
			// Relay to the room from whichever node the sender is on.
			assert.NoError(t, s.hub.Broadcast(ctx, "chat", m, Except(s.ID())))
			assert.NoError(t, s.Send(Text("ack")))
		}
	})
	sender := dial(t, c.nodes[0], "a")
	other := dial(t, c.nodes[1], "b")
	require.NoError(t, sender.conn.Write(bg, websocket.MessageBinary, []byte{1, 2, 3}))
	assert.Equal(t, "ack", sender.nextText())
	got := other.next()
	assert.Equal(t, MessageBinary, got.Type)
	assert.Equal(t, []byte{1, 2, 3}, got.Data)
	assert.Equal(t, uint64(1), c.nodes[0].hub.Stats().Received)
}

func testSlowClientDoesNotDelayOthers(t *testing.T, newCluster clusterMaker) {
	for _, policy := range []SlowPolicy{SlowDropOldest, SlowClose} {
		t.Run(fmt.Sprint("policy", policy), func(t *testing.T) {
			var log sessionLog
			c := newCluster(t, 2, func(i int, o *Options) {
				o.OnConnect = func(ctx context.Context, s *Session) error {
					_ = log.hook(ctx, s)
					return s.Join(ctx, "firehose")
				}
				o.SendQueueLen = 32
				// Only the slow policy may end the slow session, however long
				// the loop below takes on a loaded machine.
				o.WriteTimeout = time.Hour
				o.SlowPolicy = policy
			})
			slow := dialNoRead(t, c.nodes[0], "slow")
			fast := []*client{dial(t, c.nodes[0], "f1"), dial(t, c.nodes[1], "f2")}

			// In lockstep with the fast clients: if the slow one held up the
			// fan-out, the fast ones would stop receiving and this would fail.
			const n = 1000
			payload := strings.Repeat("x", 32<<10) // 32 MiB in all: more than socket buffers hold
			for i := 0; i < n; i++ {
				require.NoError(t, c.nodes[1].hub.Broadcast(bg, "firehose", Text(fmt.Sprintf("%d %s", i, payload))))
				for _, f := range fast {
					m := f.nextText()
					require.True(t, strings.HasPrefix(m, fmt.Sprintf("%d ", i)), "message %d out of order", i)
				}
			}
			s := log.get(t, "slow", 0)
			st := c.nodes[0].hub.Stats()
			if policy == SlowDropOldest {
				assert.NotZero(t, st.Dropped)
				s.mu.Lock()
				assert.LessOrEqual(t, len(s.queue), 32, "queue stays bounded")
				s.mu.Unlock()
			} else {
				assert.EqualValues(t, 1, st.SlowClosed)
				slow.startReading()
				// Whatever was already in the socket's buffers may come first.
				for {
					select {
					case <-slow.msgs:
						continue
					case <-slow.done:
					}
					break
				}
				assert.Equal(t, StatusTryAgainLater, CloseStatus(slow.err))
			}
		})
	}
}

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

func testMalformedBackplaneMessageIsCountedAndDropped(t *testing.T, newCluster clusterMaker) {
	c := newCluster(t, 2, nil)
	cl := dial(t, c.nodes[0], "u")
	for _, p := range [][]byte{nil, []byte("garbage"), {1, 99, 0, 0, 0, 0}} {
		require.NoError(t, c.nodes[1].bp.Publish(bg, userPrefix+"u", p))
	}
	bad := (&envelope.Envelope{Op: envelope.OpDisconnect, Target: "u", Code: 7}).Encode()
	require.NoError(t, c.nodes[1].bp.Publish(bg, userPrefix+"u", bad))
	require.NoError(t, c.nodes[1].hub.Send(bg, "u", Text("fine")))
	assert.Equal(t, "fine", cl.nextText())
	assert.EqualValues(t, 4, c.nodes[0].hub.Stats().Malformed)
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
