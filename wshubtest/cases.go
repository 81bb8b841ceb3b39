package wshubtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub"
	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/internal/envelope"
)

// hubCases are the cases of RunHub, in order.
var hubCases = []struct {
	name string
	run  func(t *testing.T, e *env)
}{
	{"SendReachesEveryNodeOfTheUserAndNobodyElse", testSendReachesEveryNodeOfTheUserAndNobodyElse},
	{"MessagesArriveByteForByte", testMessagesArriveByteForByte},
	{"OrderPerPublisher", testOrderPerPublisher},
	{"BroadcastReachesExactlyTheTopicOnAllNodes", testBroadcastReachesExactlyTheTopicOnAllNodes},
	{"NodeHearsOnlyWhatItHolds", testNodeHearsOnlyWhatItHolds},
	{"ClusterJoinAndLeaveFromAnotherNode", testClusterJoinAndLeaveFromAnotherNode},
	{"DisconnectFromAnyNodeClosesAllSessions", testDisconnectFromAnyNodeClosesAllSessions},
	{"SendSessionAcrossNodes", testSendSessionAcrossNodes},
	{"EchoThroughOnMessage", testEchoThroughOnMessage},
	{"SlowClientDoesNotDelayOthers", testSlowClientDoesNotDelayOthers},
	{"MalformedBackplaneMessageIsCountedAndDropped", testMalformedBackplaneMessageIsCountedAndDropped},
	{"CloseLeavesAGivenBackplaneOpenAndUnsubscribed", testCloseLeavesAGivenBackplaneOpenAndUnsubscribed},
	{"CutNodeReportsDownAndRecovers", testCutNodeReportsDownAndRecovers},
}

var bg = context.Background()

// sessionLog records the sessions OnConnect sees, by user.
type sessionLog struct {
	mu sync.Mutex
	m  map[string][]*wshub.Session
}

func (l *sessionLog) hook(_ context.Context, s *wshub.Session) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = make(map[string][]*wshub.Session)
	}
	l.m[s.UserID()] = append(l.m[s.UserID()], s)
	return nil
}

// get returns user's i-th session once OnConnect has recorded it.
func (l *sessionLog) get(t *testing.T, user string, i int) *wshub.Session {
	t.Helper()
	var s *wshub.Session
	require.Eventually(t, func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		if len(l.m[user]) > i {
			s = l.m[user][i]
		}
		return s != nil
	}, Timeout, time.Millisecond)
	return s
}

// stopsHearing waits until node i no longer receives topic's broadcasts:
// it broadcasts to topic from node from, then sends a marker to user (who
// has a session on node i and none in topic) and reads it on every client
// of the user, until the marker is the only message node i received. The wait ends when node i has dropped its
// interest in the topic, which it does after the last member left.
func (c *suiteCluster) stopsHearing(t *testing.T, i, from int, topic, user string, clients ...*Client) {
	t.Helper()
	deadline := time.Now().Add(Timeout)
	for {
		before := c.bps[i].received.Load()
		require.NoError(t, c.Hub(from).Broadcast(bg, topic, wshub.Text("unheard")))
		require.NoError(t, c.Hub(from).Send(bg, user, wshub.Text("marker")))
		for _, cl := range clients {
			require.Equal(t, "marker", cl.NextText(), "a broadcast reached a session that left the topic")
		}
		if c.bps[i].received.Load() == before+1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node%d still hears topic %q that it no longer holds", i, topic)
		}
		time.Sleep(time.Millisecond)
	}
}

func testSendReachesEveryNodeOfTheUserAndNobodyElse(t *testing.T, e *env) {
	c := e.cluster(3, nil)
	aliceA := c.Dial(t, 0, "alice")
	aliceB := c.Dial(t, 1, "alice")
	bobA := c.Dial(t, 0, "bob")
	carolC := c.Dial(t, 2, "carol")

	sendAndRead(t, c.Cluster, 2, "alice", "hello alice", aliceA, aliceB)

	// bob and carol get the marker first: the message to alice never reached them.
	require.NoError(t, c.Hub(2).Send(bg, "bob", wshub.Text("marker")))
	sendAndRead(t, c.Cluster, 2, "carol", "marker", bobA, carolC)

	// A user with no session anywhere is not an error.
	require.NoError(t, c.Hub(0).Send(bg, "nobody", wshub.Text("x")))
}

func testMessagesArriveByteForByte(t *testing.T, e *env) {
	c := e.cluster(2, nil)
	cl := c.Dial(t, 0, "u")
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	msgs := []wshub.Message{
		wshub.Text(""),
		wshub.Text("héllo ✓"),
		wshub.Binary([]byte{}),
		wshub.Binary(all),
		wshub.Binary(bytes.Repeat([]byte{0xAB}, 1<<20)),
	}
	for _, m := range msgs {
		require.NoError(t, c.Hub(1).Send(bg, "u", m))
	}
	for i, want := range msgs {
		got := cl.Next()
		assert.Equal(t, want.Type, got.Type, "message %d", i)
		assert.True(t, bytes.Equal(want.Data, got.Data), "message %d byte for byte", i)
	}
}

func testOrderPerPublisher(t *testing.T, e *env) {
	c := e.cluster(3, func(i int, o *wshub.Options) { o.SendQueueLen = 2000 })
	cl := c.Dial(t, 0, "u")
	const n = 500
	var wg sync.WaitGroup
	for _, from := range []int{1, 2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n {
				assert.NoError(t, c.Hub(from).Send(bg, "u", wshub.Text(fmt.Sprintf("%d:%d", from, i))))
			}
		}()
	}
	wg.Wait()
	last := map[string]int{"1": -1, "2": -1}
	for range 2 * n {
		var from string
		var seq int
		_, err := fmt.Sscanf(strings.Replace(cl.NextText(), ":", " ", 1), "%s %d", &from, &seq)
		require.NoError(t, err)
		require.Equal(t, last[from]+1, seq, "publisher %s out of order", from)
		last[from] = seq
	}
}

func testBroadcastReachesExactlyTheTopicOnAllNodes(t *testing.T, e *env) {
	var log sessionLog
	c := e.cluster(3, func(i int, o *wshub.Options) { o.OnConnect = log.hook })
	members := []*Client{c.Dial(t, 0, "m0"), c.Dial(t, 1, "m1"), c.Dial(t, 2, "m2")}
	outsider := c.Dial(t, 1, "out")
	for _, u := range []string{"m0", "m1", "m2"} {
		s := log.get(t, u, 0)
		require.NoError(t, s.Join(bg, "room"))
		assert.Equal(t, []string{"room"}, s.Topics())
	}

	require.NoError(t, c.Hub(0).Broadcast(bg, "room", wshub.Text("to the room")))
	for _, m := range members {
		assert.Equal(t, "to the room", m.NextText())
	}

	// Except leaves the sender out, wherever it is.
	sender := log.get(t, "m1", 0)
	require.NoError(t, c.Hub(2).Broadcast(bg, "room", wshub.Text("relayed"), wshub.Except(sender.ID())))
	require.NoError(t, c.Hub(2).Broadcast(bg, "room", wshub.Text("after")))
	assert.Equal(t, "relayed", members[0].NextText())
	assert.Equal(t, "relayed", members[2].NextText())
	assert.Equal(t, "after", members[1].NextText(), "the excepted session got the relayed message")
	assert.Equal(t, "after", members[0].NextText())
	assert.Equal(t, "after", members[2].NextText())

	require.NoError(t, c.Hub(2).Send(bg, "out", wshub.Text("marker")))
	assert.Equal(t, "marker", outsider.NextText(), "a non-member got a broadcast")

	// Leaving stops delivery; the node drops its interest with the last member.
	require.NoError(t, sender.Leave("room"))
	c.stopsHearing(t, 1, 0, "room", "m1", members[1])
}

func testNodeHearsOnlyWhatItHolds(t *testing.T, e *env) {
	c := e.cluster(3, nil)
	alice := c.Dial(t, 0, "alice")
	bob := c.Dial(t, 2, "bob")
	base0, base2 := c.bps[0].received.Load(), c.bps[2].received.Load()
	for range 10 {
		require.NoError(t, c.Hub(1).Send(bg, "alice", wshub.Text("x")))
	}
	for range 10 {
		require.Equal(t, "x", alice.NextText())
	}
	assert.Equal(t, base0+10, c.bps[0].received.Load(), "node0 received more than was sent to it")
	// node2 holds bob alone. A message to bob, published after the ten, is
	// the first thing it receives (on backends that keep one order per
	// receiving node, any of the ten would have come before it).
	require.NoError(t, c.Hub(1).Send(bg, "bob", wshub.Text("marker")))
	require.Equal(t, "marker", bob.NextText())
	assert.Equal(t, base2+1, c.bps[2].received.Load(), "node2 received messages for a user it does not hold")
}

func testClusterJoinAndLeaveFromAnotherNode(t *testing.T, e *env) {
	c := e.cluster(3, nil)
	aliceA := c.Dial(t, 0, "alice")
	aliceB := c.Dial(t, 1, "alice")
	bobB := c.Dial(t, 1, "bob")

	// What is sent to alice after the Join follows it: once she has the
	// notice, every node of hers is in the topic.
	require.NoError(t, c.Hub(2).Join(bg, "alice", "news"))
	sendAndRead(t, c.Cluster, 2, "alice", "joined", aliceA, aliceB)
	require.NoError(t, c.Hub(2).Broadcast(bg, "news", wshub.Text("headline")))
	assert.Equal(t, "headline", aliceA.NextText())
	assert.Equal(t, "headline", aliceB.NextText())
	require.NoError(t, c.Hub(2).Send(bg, "bob", wshub.Text("marker")))
	assert.Equal(t, "marker", bobB.NextText(), "bob was not joined")

	// The same for Leave: after the notice no node delivers the topic to
	// alice, and node0, which held the topic for her alone, stops hearing it.
	require.NoError(t, c.Hub(2).Leave(bg, "alice", "news"))
	sendAndRead(t, c.Cluster, 2, "alice", "left", aliceA, aliceB)
	require.NoError(t, c.Hub(2).Broadcast(bg, "news", wshub.Text("missed")))
	sendAndRead(t, c.Cluster, 2, "alice", "marker", aliceA, aliceB)
	c.stopsHearing(t, 0, 2, "news", "alice", aliceA, aliceB)
}

func testDisconnectFromAnyNodeClosesAllSessions(t *testing.T, e *env) {
	c := e.cluster(3, nil)
	aliceA := c.Dial(t, 0, "alice")
	aliceB := c.Dial(t, 1, "alice")
	bob := c.Dial(t, 1, "bob")

	require.NoError(t, c.Hub(0).Send(bg, "alice", wshub.Text("last words")))
	require.NoError(t, c.Hub(2).Disconnect(bg, "alice", 4001, "kicked"))
	// Queued messages are sent before the close.
	assert.Equal(t, "last words", aliceA.NextText())
	assert.Equal(t, "last words", aliceB.NextText())
	assert.Equal(t, wshub.StatusCode(4001), aliceA.Closed())
	assert.Equal(t, wshub.StatusCode(4001), aliceB.Closed())
	require.Eventually(t, func() bool { // bob's is the only session left
		return c.Hub(0).Stats().Sessions == 0 && c.Hub(1).Stats().Sessions == 1
	}, Timeout, time.Millisecond)

	require.NoError(t, c.Hub(2).Send(bg, "bob", wshub.Text("still here")))
	assert.Equal(t, "still here", bob.NextText())
}

func testSendSessionAcrossNodes(t *testing.T, e *env) {
	// Each client learns its session ID from its first message.
	c := e.cluster(3, func(i int, o *wshub.Options) {
		o.OnConnect = func(_ context.Context, s *wshub.Session) error { return s.Send(wshub.Text(s.ID())) }
	})
	a1 := c.Dial(t, 0, "alice")
	a2 := c.Dial(t, 0, "alice")
	a1.NextText()
	second := a2.NextText()
	require.NoError(t, c.Hub(2).SendSession(bg, second, wshub.Text("only you")))
	require.NoError(t, c.Hub(2).Send(bg, "alice", wshub.Text("both")))
	assert.Equal(t, "both", a1.NextText())
	// The inbox and the user are different channels: a sharded backplane
	// keeps no order between them.
	assert.ElementsMatch(t, []string{"only you", "both"}, []string{a2.NextText(), a2.NextText()})

	// A session that ended is not an error.
	require.NoError(t, c.Hub(1).SendSession(bg, "node0.zzz-1", wshub.Text("gone")))
}

func testEchoThroughOnMessage(t *testing.T, e *env) {
	c := e.cluster(2, func(i int, o *wshub.Options) {
		o.OnConnect = func(ctx context.Context, s *wshub.Session) error { return s.Join(ctx, "chat") }
		o.OnMessage = func(ctx context.Context, s *wshub.Session, m wshub.Message) {
			// Relay to the room from whichever node the sender is on.
			assert.NoError(t, s.Hub().Broadcast(ctx, "chat", m, wshub.Except(s.ID())))
			assert.NoError(t, s.Send(wshub.Text("ack")))
		}
	})
	sender := c.Dial(t, 0, "a")
	other := c.Dial(t, 1, "b")
	sender.Send(wshub.Binary([]byte{1, 2, 3}))
	assert.Equal(t, "ack", sender.NextText())
	got := other.Next()
	assert.Equal(t, wshub.MessageBinary, got.Type)
	assert.Equal(t, []byte{1, 2, 3}, got.Data)
	assert.Equal(t, uint64(1), c.Hub(0).Stats().Received)
}

func testSlowClientDoesNotDelayOthers(t *testing.T, e *env) {
	for _, policy := range []wshub.SlowPolicy{wshub.SlowDropOldest, wshub.SlowClose} {
		t.Run(fmt.Sprint("policy", policy), func(t *testing.T) {
			c := e.fresh(t).cluster(2, func(i int, o *wshub.Options) {
				o.OnConnect = func(ctx context.Context, s *wshub.Session) error { return s.Join(ctx, "firehose") }
				o.SendQueueLen = 32
				// Only the slow policy may end the slow session, however long
				// the loop below takes on a loaded machine.
				o.WriteTimeout = time.Hour
				o.SlowPolicy = policy
			})
			slow := c.dial(t, 0, "slow", nil) // not reading
			fast := []*Client{c.Dial(t, 0, "f1"), c.Dial(t, 1, "f2")}

			// In lockstep with the fast clients: if the slow one held up the
			// fan-out, the fast ones would stop receiving and this would fail.
			const n = 1000
			payload := strings.Repeat("x", 32<<10) // 32 MiB in all: more than socket buffers hold
			for i := range n {
				require.NoError(t, c.Hub(1).Broadcast(bg, "firehose", wshub.Text(fmt.Sprintf("%d %s", i, payload))))
				for _, f := range fast {
					m := f.NextText()
					require.True(t, strings.HasPrefix(m, fmt.Sprintf("%d ", i)), "message %d out of order", i)
				}
			}
			st := c.Hub(0).Stats()
			if policy == wshub.SlowDropOldest {
				assert.NotZero(t, st.Dropped)
				assert.Zero(t, st.SlowClosed)
				return
			}
			assert.EqualValues(t, 1, st.SlowClosed)
			slow.startReading()
			// Whatever was already in the socket's buffers may come first.
			assert.Equal(t, wshub.StatusTryAgainLater, slow.Closed())
		})
	}
}

func testMalformedBackplaneMessageIsCountedAndDropped(t *testing.T, e *env) {
	c := e.cluster(2, nil)
	held := c.bps[0].held()
	cl := c.Dial(t, 0, "u")
	// The channel node0 took for u's session is u's channel.
	var userCh string
	for ch := range c.bps[0].held() {
		if !held[ch] {
			userCh = ch
		}
	}
	require.NotEmpty(t, userCh, "node0 subscribed to no new channel for u")
	for _, p := range [][]byte{nil, []byte("garbage"), {1, 99, 0, 0, 0, 0}} {
		require.NoError(t, c.bps[1].Publish(bg, userCh, p))
	}
	// Well formed, but a close status no server may send.
	bad := (&envelope.Envelope{Op: envelope.OpDisconnect, Target: "u", Code: 7}).Encode()
	require.NoError(t, c.bps[1].Publish(bg, userCh, bad))
	require.NoError(t, c.Hub(1).Send(bg, "u", wshub.Text("fine")))
	assert.Equal(t, "fine", cl.NextText())
	assert.EqualValues(t, 4, c.Hub(0).Stats().Malformed)
}

// The hub leaves a backplane it was given open, and unsubscribed.
func testCloseLeavesAGivenBackplaneOpenAndUnsubscribed(t *testing.T, e *env) {
	c := e.cluster(2, nil)
	n, other := c.bps[0], c.bps[1]
	c.Dial(t, 0, "u")
	held := n.held()
	require.NotEmpty(t, held)
	require.NoError(t, c.Hub(0).Close(bg))
	assert.Empty(t, n.held(), "the hub left channels subscribed")
	// Still open: it can subscribe (a closed node returns ErrClosed).
	err := n.Subscribe(bg, "sync")
	require.NotErrorIs(t, err, backplane.ErrClosed, "the hub closed a backplane it was given")
	require.NoError(t, err)
	// Nothing else is subscribed: a marker on "sync", published last, is
	// the only delivery (on backends that keep one order per receiving
	// node, the others would have come first).
	before := n.received.Load()
	for ch := range held {
		require.NoError(t, other.Publish(bg, ch, []byte("x")))
	}
	require.NoError(t, other.Publish(bg, "sync", []byte("marker")))
	var got uint64
	require.Eventually(t, func() bool {
		got = n.received.Load()
		return got >= before+1
	}, Timeout, time.Millisecond, "the marker did not arrive")
	assert.Equal(t, before+1, got, "node0 is still subscribed after Close")
}

// eventLog records the backplane events a hub passes on.
type eventLog struct {
	mu     sync.Mutex
	events []backplane.Event
}

func (l *eventLog) hook(e backplane.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, e)
}

// find returns the first event of kind, if one came.
func (l *eventLog) find(kind backplane.EventKind) (backplane.Event, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.events {
		if e.Kind == kind {
			return e, true
		}
	}
	return backplane.Event{}, false
}

func testCutNodeReportsDownAndRecovers(t *testing.T, e *env) {
	faults, ok := e.h.(Faults)
	if !ok {
		t.Skip("wshubtest: the harness does not implement Faults")
	}
	var events eventLog
	c := e.cluster(2, func(i int, o *wshub.Options) {
		if i == 1 {
			o.OnBackplaneEvent = events.hook
		}
	})
	for i, w := range c.bps {
		_, notifies := w.Backplane.(backplane.Notifier)
		_, checks := w.Backplane.(backplane.Checker)
		require.True(t, notifies && checks, "node%d's backplane, which Faults can cut, implements neither backplane.Notifier nor backplane.Checker", i)
	}
	cl := c.Dial(t, 1, "u")
	require.NoError(t, c.Hub(1).Health())

	require.NoError(t, faults.Cut("node1"))
	require.Eventually(t, func() bool { _, ok := events.find(backplane.EventDown); return ok }, Timeout, time.Millisecond,
		"no EventDown for the cut node")
	require.Eventually(t, func() bool { return errors.Is(c.Hub(1).Health(), backplane.ErrUnavailable) }, Timeout, time.Millisecond,
		"the cut node's Health does not wrap backplane.ErrUnavailable")
	// The node that was not cut delivers; its own subscription may still
	// be connecting when the other's cut is reported.
	require.Eventually(t, func() bool { return c.Hub(0).Health() == nil }, Timeout, time.Millisecond,
		"the node that was not cut is not healthy")
	if e.f.CatchUp {
		require.NoError(t, c.Hub(0).Send(bg, "u", wshub.Text("during the cut")))
	}

	require.NoError(t, faults.Heal("node1"))
	require.Eventually(t, func() bool { _, ok := events.find(backplane.EventRestored); return ok }, Timeout, time.Millisecond,
		"no EventRestored for the healed node")
	restored, _ := events.find(backplane.EventRestored)
	require.NoError(t, c.Hub(1).Health())
	require.NoError(t, c.Hub(0).Send(bg, "u", wshub.Text("after heal")))
	if e.f.CatchUp {
		assert.False(t, restored.Gap, "a backend that catches up restored with a gap")
		assert.Equal(t, "during the cut", cl.NextText())
	}
	assert.Equal(t, "after heal", cl.NextText())
	st := c.Hub(1).Stats()
	assert.GreaterOrEqual(t, st.BackplaneDowns, uint64(1))
}

// sendAndRead sends text to user from node i's hub and checks that each of
// clients gets it as its next message.
func sendAndRead(t *testing.T, c *Cluster, i int, user, text string, clients ...*Client) {
	t.Helper()
	require.NoError(t, c.Hub(i).Send(bg, user, wshub.Text(text)))
	for _, cl := range clients {
		assert.Equal(t, text, cl.NextText())
	}
}
