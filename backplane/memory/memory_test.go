package memory_test

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/backplane/memory"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitTimeout guards every wait against a hang; it is not a measure.
const waitTimeout = 10 * time.Second

type message struct {
	channel string
	payload string
}

// peer is a started node whose handler and Notify function feed channels.
type peer struct {
	*memory.Node
	msgs   chan message
	events chan backplane.Event
}

// newPeer makes a node called name on bus, watches its events, starts it and
// closes it when the test ends.
func newPeer(t *testing.T, bus *memory.Bus, name string) *peer {
	t.Helper()
	p := unstartedPeer(t, bus, name)
	require.NoError(t, p.Start(p.handle))
	return p
}

// unstartedPeer is newPeer without Start.
func unstartedPeer(t *testing.T, bus *memory.Bus, name string) *peer {
	t.Helper()
	n, err := bus.NewNode(name)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, n.Close()) })
	p := &peer{Node: n, msgs: make(chan message, 4096), events: make(chan backplane.Event, 64)}
	n.Notify(func(ev backplane.Event) { p.events <- ev })
	return p
}

func (p *peer) handle(m backplane.Message) {
	p.msgs <- message{channel: m.Channel, payload: string(m.Payload)}
}

// next returns the next message p receives.
func (p *peer) next(t *testing.T) message {
	t.Helper()
	return receive(t, p.msgs, p.Name(), "message")
}

// nextEvent returns the next event reported to p.
func (p *peer) nextEvent(t *testing.T) backplane.Event {
	t.Helper()
	return receive(t, p.events, p.Name(), "event")
}

// receive returns the next value from c, failing the test if none comes
// within waitTimeout.
func receive[T any](t *testing.T, c <-chan T, node, what string) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(waitTimeout):
		require.FailNow(t, "no "+what, "node %s got no %s within %v", node, what, waitTimeout)
		var zero T
		return zero
	}
}

func publish(t *testing.T, p *peer, channel, payload string) {
	t.Helper()
	require.NoError(t, p.Publish(context.Background(), channel, []byte(payload)))
}

func subscribe(t *testing.T, p *peer, channels ...string) {
	t.Helper()
	require.NoError(t, p.Subscribe(context.Background(), channels...))
}

func stats(t *testing.T, bus *memory.Bus, name string) memory.NodeStats {
	t.Helper()
	st, err := bus.Stats(name)
	require.NoError(t, err)
	return st
}

// counts returns the Delivered and Dropped counters of the named node, the
// rest of its stats zeroed.
func counts(t *testing.T, bus *memory.Bus, name string) memory.NodeStats {
	t.Helper()
	st := stats(t, bus, name)
	return memory.NodeStats{Delivered: st.Delivered, Dropped: st.Dropped}
}

func TestPartition(t *testing.T) {
	bus := memory.NewBus()
	a, b := newPeer(t, bus, "a"), newPeer(t, bus, "b")
	subscribe(t, a, "ch")
	subscribe(t, b, "ch")

	require.NoError(t, bus.Partition("b"))
	require.NoError(t, bus.Partition("b"), "partitioning twice is a no-op")
	ev := b.nextEvent(t)
	assert.Equal(t, backplane.EventDown, ev.Kind)
	assert.ErrorIs(t, ev.Err, backplane.ErrUnavailable)

	publish(t, a, "ch", "lost")
	assert.Equal(t, message{"ch", "lost"}, a.next(t), "the publisher still receives")
	assert.Equal(t, memory.NodeStats{Delivered: 0, Dropped: 1}, counts(t, bus, "b"))

	err := b.Publish(context.Background(), "ch", []byte("from b"))
	assert.ErrorIs(t, err, backplane.ErrUnavailable, "Publish while partitioned")
	require.NoError(t, b.Subscribe(context.Background(), "ch2"), "Subscribe while partitioned")
	require.NoError(t, b.Unsubscribe(context.Background(), "ch3"), "Unsubscribe while partitioned")

	require.NoError(t, bus.Heal("b"))
	require.NoError(t, bus.Heal("b"), "healing twice is a no-op")
	ev = b.nextEvent(t)
	assert.Equal(t, backplane.EventRestored, ev.Kind)
	assert.True(t, ev.Gap, "a message was dropped while b was cut off")

	publish(t, a, "ch2", "hi2") // subscribed while partitioned
	publish(t, a, "ch", "hi")
	publish(t, b, "ch", "b is back")
	// One queue per node: what b receives is in publishing order, and the
	// events of the second Partition and Heal would have come before.
	assert.Equal(t, message{"ch2", "hi2"}, b.next(t))
	assert.Equal(t, message{"ch", "hi"}, b.next(t))
	assert.Equal(t, message{"ch", "b is back"}, b.next(t))
	assert.Empty(t, b.events, "events besides one down and one restored")
	assert.Equal(t, memory.NodeStats{Delivered: 3, Dropped: 1}, counts(t, bus, "b"))
}

func TestHealWithoutLoss(t *testing.T) {
	bus := memory.NewBus()
	a, b := newPeer(t, bus, "a"), newPeer(t, bus, "b")
	subscribe(t, b, "ch")
	require.NoError(t, bus.Partition("b"))
	publish(t, a, "other", "nobody listens") // b is not subscribed: nothing lost
	require.NoError(t, bus.Heal("b"))
	assert.Equal(t, backplane.EventDown, b.nextEvent(t).Kind)
	ev := b.nextEvent(t)
	assert.Equal(t, backplane.Event{Kind: backplane.EventRestored, Gap: false}, ev)

	// A second partition starts a new gap count.
	require.NoError(t, bus.Partition("b"))
	publish(t, a, "ch", "lost")
	require.NoError(t, bus.Heal("b"))
	require.NoError(t, bus.Partition("b"))
	require.NoError(t, bus.Heal("b"))
	gaps := []bool{}
	for range 4 {
		if ev := b.nextEvent(t); ev.Kind == backplane.EventRestored {
			gaps = append(gaps, ev.Gap)
		}
	}
	assert.Equal(t, []bool{true, false}, gaps)
}

func TestEventsBeforeStartAreQueued(t *testing.T) {
	bus := memory.NewBus()
	b := unstartedPeer(t, bus, "b")
	require.NoError(t, bus.Partition("b"))
	require.NoError(t, bus.Heal("b"))
	require.NoError(t, b.Start(b.handle))
	assert.Equal(t, backplane.EventDown, b.nextEvent(t).Kind)
	assert.Equal(t, backplane.EventRestored, b.nextEvent(t).Kind)
}

func TestPartitionWithoutNotify(t *testing.T) {
	bus := memory.NewBus()
	n, err := bus.NewNode("quiet")
	require.NoError(t, err)
	defer func() { require.NoError(t, n.Close()) }()
	require.NoError(t, n.Start(func(backplane.Message) {}))
	require.NoError(t, bus.Partition("quiet"))
	require.NoError(t, bus.Heal("quiet"))
}

func TestSubscribeAndPublishBeforeStart(t *testing.T) {
	bus := memory.NewBus()
	a := unstartedPeer(t, bus, "a")
	subscribe(t, a, "ch")
	publish(t, a, "ch", "early")
	require.NoError(t, a.Start(a.handle))
	assert.Equal(t, message{"ch", "early"}, a.next(t))
}

func TestSetDelay(t *testing.T) {
	const d, k = 30 * time.Millisecond, 20
	bus := memory.NewBus()
	a, b := newPeer(t, bus, "a"), newPeer(t, bus, "b")
	subscribe(t, b, "ch")
	require.NoError(t, bus.SetDelay("b", d))

	start := time.Now()
	for i := range k {
		publish(t, a, "ch", strconv.Itoa(i))
	}
	for i := range k {
		assert.Equal(t, message{"ch", strconv.Itoa(i)}, b.next(t))
	}
	// A lower bound only: the delivery cannot come before its due time.
	assert.GreaterOrEqual(t, time.Since(start), d, "delivered before the delay")

	// Shortening the delay never lets a message overtake an earlier one.
	require.NoError(t, bus.SetDelay("b", 50*time.Millisecond))
	publish(t, a, "ch", "slow")
	require.NoError(t, bus.SetDelay("b", 0))
	publish(t, a, "ch", "fast")
	assert.Equal(t, message{"ch", "slow"}, b.next(t))
	assert.Equal(t, message{"ch", "fast"}, b.next(t))
	assert.Equal(t, memory.NodeStats{Delivered: k + 2}, counts(t, bus, "b"))

	require.Error(t, bus.SetDelay("b", -time.Second))
}

func TestCloseWhileDelayed(t *testing.T) {
	bus := memory.NewBus()
	a, b := newPeer(t, bus, "a"), newPeer(t, bus, "b")
	subscribe(t, b, "ch")
	require.NoError(t, bus.SetDelay("b", time.Hour))
	publish(t, a, "ch", "never")
	closed := make(chan error, 1)
	go func() { closed <- b.Close() }()
	select {
	case err := <-closed:
		require.NoError(t, err)
	case <-time.After(waitTimeout):
		require.FailNow(t, "Close waited for a delayed message")
	}
	assert.Empty(t, b.msgs)
}

func TestSetDropRate(t *testing.T) {
	const k = 1000
	bus := memory.NewBus()
	a, b := newPeer(t, bus, "a"), newPeer(t, bus, "b")
	subscribe(t, a, "ch")
	subscribe(t, b, "ch")

	require.NoError(t, bus.SetDropRate("b", 1))
	for i := range k {
		publish(t, a, "ch", strconv.Itoa(i))
	}
	for range k {
		a.next(t) // drops are per receiving node
	}
	assert.Equal(t, memory.NodeStats{Delivered: 0, Dropped: k}, counts(t, bus, "b"))

	require.NoError(t, bus.SetDropRate("b", 0))
	for i := range k {
		publish(t, a, "ch", strconv.Itoa(i))
	}
	for i := range k {
		assert.Equal(t, message{"ch", strconv.Itoa(i)}, b.next(t))
	}
	assert.Equal(t, memory.NodeStats{Delivered: k, Dropped: k}, counts(t, bus, "b"))

	// Half: some of each, for certain but for a chance of 2^-1000.
	require.NoError(t, bus.SetDropRate("b", 0.5))
	for i := range k {
		publish(t, a, "ch", strconv.Itoa(i))
	}
	require.NoError(t, bus.SetDropRate("b", 0))
	publish(t, a, "ch", "sync")
	for m := b.next(t); m.payload != "sync"; m = b.next(t) {
	}
	st := stats(t, bus, "b")
	assert.Equal(t, uint64(3*k+1), st.Delivered+st.Dropped, "every delivery counted once")
	assert.Less(t, st.Dropped, uint64(2*k), "nothing delivered at rate 0.5")
	assert.Greater(t, st.Dropped, uint64(k), "nothing dropped at rate 0.5")

	for _, p := range []float64{-0.1, 1.1, math.NaN(), math.Inf(1)} {
		assert.Error(t, bus.SetDropRate("b", p), "rate %v", p)
	}
}

func TestUnknownNode(t *testing.T) {
	bus := memory.NewBus()
	n, err := bus.NewNode("gone")
	require.NoError(t, err)
	require.NoError(t, n.Close())

	for _, name := range []string{"nope", "gone", ""} {
		calls := map[string]error{
			"Partition":     bus.Partition(name),
			"Heal":          bus.Heal(name),
			"SetDelay":      bus.SetDelay(name, time.Second),
			"SetDropRate":   bus.SetDropRate(name, 0.5),
			"SetQueueLimit": bus.SetQueueLimit(name, 1, 1),
		}
		_, calls["Stats"] = bus.Stats(name)
		for call, err := range calls {
			assert.ErrorIs(t, err, memory.ErrUnknownNode, "%s(%q)", call, name)
		}
	}
}

func TestNewNode(t *testing.T) {
	bus := memory.NewBus()
	a, err := bus.NewNode("a")
	require.NoError(t, err)
	assert.Equal(t, "a", a.Name())

	_, err = bus.NewNode("a")
	assert.ErrorIs(t, err, memory.ErrNodeExists)

	// Generated names are unique, and skip names already taken.
	taken, err := bus.NewNode("node-1")
	require.NoError(t, err)
	seen := map[string]bool{"a": true, "node-1": true}
	var generated []*memory.Node
	for range 5 {
		n, err := bus.NewNode("")
		require.NoError(t, err)
		assert.NotEmpty(t, n.Name())
		assert.False(t, seen[n.Name()], "name %q given twice", n.Name())
		seen[n.Name()] = true
		generated = append(generated, n)
	}

	// Closing frees the name.
	require.NoError(t, a.Close())
	again, err := bus.NewNode("a")
	require.NoError(t, err)

	for _, n := range append(generated, taken, again) {
		require.NoError(t, n.Close())
	}
}

func TestZeroBus(t *testing.T) {
	var bus memory.Bus
	a := newPeer(t, &bus, "a")
	subscribe(t, a, "ch")
	publish(t, a, "ch", "zero value works")
	assert.Equal(t, message{"ch", "zero value works"}, a.next(t))
}

func TestStartNilHandler(t *testing.T) {
	bus := memory.NewBus()
	n, err := bus.NewNode("")
	require.NoError(t, err)
	defer func() { require.NoError(t, n.Close()) }()
	require.Error(t, n.Start(nil))
	require.NoError(t, n.Start(func(backplane.Message) {}), "a failed Start does not count")
}

func TestOpen(t *testing.T) {
	ctx := context.Background()
	bp, err := backplane.Open(ctx, "memory://")
	require.NoError(t, err)
	got := make(chan string, 1)
	require.NoError(t, bp.Start(func(m backplane.Message) { got <- string(m.Payload) }))
	require.NoError(t, bp.Subscribe(ctx, "ch"))
	require.NoError(t, bp.Publish(ctx, "ch", []byte("self")))
	select {
	case p := <-got:
		assert.Equal(t, "self", p)
	case <-time.After(waitTimeout):
		require.FailNow(t, "no message")
	}
	require.NoError(t, bp.Close())
	assert.Contains(t, backplane.Schemes(), "memory")

	for _, u := range []string{"memory://x", "memory://bus/a", "memory:///", "memory://?name=a", "memory://#f", "memory:x", "memory://u@"} {
		bp, err := backplane.Open(ctx, u)
		if !assert.Error(t, err, u) {
			require.NoError(t, bp.Close())
		}
	}

	canceled, cancel := context.WithCancel(ctx)
	cancel()
	_, err = backplane.Open(canceled, "memory://")
	assert.ErrorIs(t, err, context.Canceled)
}

// gated is a started node whose handler blocks on each message until the
// test takes it with next, or until the gate is opened for good.
type gated struct {
	*memory.Node
	msgs chan string // unbuffered: the handler waits for the test
	open chan struct{}
	once sync.Once
}

// newGated makes a gated node called name on bus whose queue holds
// messages messages and bytes bytes, and closes it when the test ends.
func newGated(t *testing.T, bus *memory.Bus, name string, messages, bytes int) *gated {
	t.Helper()
	n, err := bus.NewNode(name)
	require.NoError(t, err)
	g := &gated{Node: n, msgs: make(chan string), open: make(chan struct{})}
	t.Cleanup(func() {
		g.release()
		assert.NoError(t, n.Close())
	})
	require.NoError(t, bus.SetQueueLimit(name, messages, bytes))
	require.NoError(t, n.Start(func(m backplane.Message) {
		select {
		case g.msgs <- string(m.Payload):
		case <-g.open:
		}
	}))
	return g
}

// release lets the handler return at once from now on.
func (g *gated) release() { g.once.Do(func() { close(g.open) }) }

// next takes the message the handler is blocked on.
func (g *gated) next(t *testing.T) string {
	t.Helper()
	select {
	case m := <-g.msgs:
		return m
	case <-time.After(waitTimeout):
		require.FailNow(t, "no message", "node %s received nothing within %v", g.Name(), waitTimeout)
		return ""
	}
}

// publishAsync starts a Publish and returns where its result will be sent.
func publishAsync(ctx context.Context, n *memory.Node, channel, payload string) <-chan error {
	res := make(chan error, 1)
	go func() { res <- n.Publish(ctx, channel, []byte(payload)) }()
	return res
}

// result waits for the result of a Publish started by publishAsync.
func result(t *testing.T, res <-chan error) error {
	t.Helper()
	select {
	case err := <-res:
		return err
	case <-time.After(waitTimeout):
		require.FailNow(t, "Publish still waits")
		return nil
	}
}

// waitWaits waits until Publish found the named node's queue full want
// times, and checks that the Publish whose result res will carry has not
// returned: it is waiting for room.
func waitWaits(t *testing.T, bus *memory.Bus, name string, want uint64, res <-chan error) {
	t.Helper()
	var err error
	returned := false
	require.Eventually(t, func() bool {
		select {
		case err = <-res:
			returned = true
			return true
		default:
			return stats(t, bus, name).Waits == want
		}
	}, waitTimeout, time.Millisecond, "Publish did not wait for room in %s", name)
	require.False(t, returned, "Publish returned %v instead of waiting for room in %s", err, name)
}

// queued waits until the named node's handler has returned from all but
// want of the messages meant for it.
func queued(t *testing.T, bus *memory.Bus, name string, want int) {
	t.Helper()
	require.Eventually(t, func() bool { return stats(t, bus, name).Queued == want }, waitTimeout, time.Millisecond,
		"%s did not drain to %d", name, want)
}

// received drains what p received so far, expecting exactly want.
func (p *peer) received(t *testing.T, want ...string) {
	t.Helper()
	for _, w := range want {
		assert.Equal(t, message{"ch", w}, p.next(t))
	}
	assert.Empty(t, p.msgs, "more than %v", want)
}

func TestFullQueueMakesPublishWait(t *testing.T) {
	bus := memory.NewBus()
	a, c := newPeer(t, bus, "a"), newPeer(t, bus, "c")
	b := newGated(t, bus, "b", 3, 1<<20)
	subscribe(t, a, "ch")
	subscribe(t, c, "ch")
	require.NoError(t, b.Subscribe(context.Background(), "ch"))

	// b's handler holds m0 and its queue m1 and m2: it is full.
	for _, m := range []string{"m0", "m1", "m2"} {
		publish(t, a, "ch", m)
	}
	st := stats(t, bus, "b")
	assert.Equal(t, 3, st.Queued, "what the handler holds counts")
	assert.Equal(t, 6, st.QueuedBytes)

	// The next Publish waits for room, until its context ends; then its
	// message reaches nobody, not even the nodes that had room.
	ctx, cancel := context.WithCancel(context.Background())
	res := publishAsync(ctx, a.Node, "ch", "m3")
	waitWaits(t, bus, "b", 1, res)
	cancel()
	assert.ErrorIs(t, result(t, res), context.Canceled)
	assert.EqualValues(t, 1, stats(t, bus, "b").Abandoned)

	// Once the handler moves on there is room again; everything delivered
	// is in publishing order and m3 is nowhere.
	assert.Equal(t, "m0", b.next(t))
	queued(t, bus, "b", 2)
	publish(t, a, "ch", "m4")
	for _, m := range []string{"m1", "m2", "m4"} {
		assert.Equal(t, m, b.next(t))
	}
	a.received(t, "m0", "m1", "m2", "m4")
	c.received(t, "m0", "m1", "m2", "m4")
	queued(t, bus, "b", 0)
	st = stats(t, bus, "b")
	assert.Equal(t, memory.NodeStats{Delivered: 4, PeakQueued: 3, PeakQueuedBytes: 6, Waits: 1, Abandoned: 1}, st)

	// Fill b again. Closing the publisher wakes its waiting Publish with
	// ErrClosed, and that message too reaches nobody.
	for _, m := range []string{"x0", "x1", "x2"} {
		publish(t, a, "ch", m)
	}
	res = publishAsync(context.Background(), a.Node, "ch", "x3")
	waitWaits(t, bus, "b", 2, res)
	require.NoError(t, a.Close())
	assert.ErrorIs(t, result(t, res), backplane.ErrClosed)

	// A full node that closes is skipped by the Publish waiting for it. Its
	// Close waits for the handler, which still holds x0.
	res = publishAsync(context.Background(), c.Node, "ch", "y")
	waitWaits(t, bus, "b", 3, res)
	closed := make(chan error, 1)
	go func() { closed <- b.Close() }()
	require.NoError(t, result(t, res))
	c.received(t, "x0", "x1", "x2", "y")
	assert.Equal(t, "x0", b.next(t))
	select {
	case err := <-closed:
		require.NoError(t, err)
	case <-time.After(waitTimeout):
		require.FailNow(t, "Close did not return")
	}
}

func TestQueueByteLimit(t *testing.T) {
	bus := memory.NewBus()
	a := newPeer(t, bus, "a")
	b := newGated(t, bus, "b", 100, 10)
	require.NoError(t, b.Subscribe(context.Background(), "ch"))

	publish(t, a, "ch", "12345678")
	ctx, cancel := context.WithCancel(context.Background())
	res := publishAsync(ctx, a.Node, "ch", "abc") // 11 bytes would not fit
	waitWaits(t, bus, "b", 1, res)
	cancel()
	assert.ErrorIs(t, result(t, res), context.Canceled)
	publish(t, a, "ch", "ab") // 10 bytes fit
	assert.Equal(t, "12345678", b.next(t))
	assert.Equal(t, "ab", b.next(t))

	// A message larger than the bound is accepted by an empty queue, and
	// fills it.
	queued(t, bus, "b", 0)
	big := strings.Repeat("x", 50)
	publish(t, a, "ch", big)
	res = publishAsync(context.Background(), a.Node, "ch", "z")
	waitWaits(t, bus, "b", 2, res)
	assert.Equal(t, big, b.next(t))
	require.NoError(t, result(t, res))
	assert.Equal(t, "z", b.next(t))
	st := stats(t, bus, "b")
	assert.Equal(t, 50, st.PeakQueuedBytes)
	assert.Equal(t, 2, st.PeakQueued)

	for _, l := range [][2]int{{0, 1}, {1, 0}, {-1, 10}} {
		assert.Error(t, bus.SetQueueLimit("b", l[0], l[1]), "limit %v", l)
	}
}

func TestWaitingPublishGoesOnWhenTheFullNodeNeedsNoRoom(t *testing.T) {
	bus := memory.NewBus()
	a := newPeer(t, bus, "a")
	b := newGated(t, bus, "b", 1, 1<<20)
	require.NoError(t, b.Subscribe(context.Background(), "ch"))
	publish(t, a, "ch", "held")

	// Raising the limit makes room.
	res := publishAsync(context.Background(), a.Node, "ch", "raised")
	waitWaits(t, bus, "b", 1, res)
	require.NoError(t, bus.SetQueueLimit("b", 2, 1<<20))
	require.NoError(t, result(t, res))

	// A partitioned node queues nothing: it is dropped, not waited for.
	res = publishAsync(context.Background(), a.Node, "ch", "dropped")
	waitWaits(t, bus, "b", 2, res)
	require.NoError(t, bus.Partition("b"))
	require.NoError(t, result(t, res))
	require.NoError(t, bus.Heal("b"))

	assert.EqualValues(t, 1, stats(t, bus, "b").Dropped)

	// Nor is a node that unsubscribes.
	res = publishAsync(context.Background(), a.Node, "ch", "unsubscribed")
	waitWaits(t, bus, "b", 3, res)
	require.NoError(t, b.Unsubscribe(context.Background(), "ch"))
	require.NoError(t, result(t, res))

	for _, m := range []string{"held", "raised"} {
		assert.Equal(t, m, b.next(t))
	}
	queued(t, bus, "b", 0)
	assert.EqualValues(t, 2, stats(t, bus, "b").Delivered, "nothing else was queued")
}

func TestDelayedQueueFillsToo(t *testing.T) {
	bus := memory.NewBus()
	a, b := newPeer(t, bus, "a"), newPeer(t, bus, "b")
	subscribe(t, b, "ch")
	require.NoError(t, bus.SetDelay("b", time.Hour))
	require.NoError(t, bus.SetQueueLimit("b", 2, 1<<20))
	publish(t, a, "ch", "1")
	publish(t, a, "ch", "2")
	ctx, cancel := context.WithCancel(context.Background())
	res := publishAsync(ctx, a.Node, "ch", "3")
	waitWaits(t, bus, "b", 1, res)
	cancel()
	assert.ErrorIs(t, result(t, res), context.Canceled)
	assert.Equal(t, 2, stats(t, bus, "b").Queued)
}

// benchBus makes a publishing node and subscribers nodes subscribed to
// "t:bench". done is closed once the subscribers received b.N messages each.
func benchBus(b *testing.B, subscribers int) (pub *memory.Node, done <-chan struct{}) {
	b.Helper()
	bus := memory.NewBus()
	pub, err := bus.NewNode("pub")
	require.NoError(b, err)
	b.Cleanup(func() { require.NoError(b, pub.Close()) })
	require.NoError(b, pub.Start(func(backplane.Message) {}))

	var got atomic.Int64
	target := int64(subscribers * b.N)
	all := make(chan struct{})
	count := func(backplane.Message) {
		if got.Add(1) == target {
			close(all)
		}
	}
	for i := range subscribers {
		n, err := bus.NewNode(fmt.Sprintf("sub-%d", i))
		require.NoError(b, err)
		b.Cleanup(func() { require.NoError(b, n.Close()) })
		require.NoError(b, n.Start(count))
		require.NoError(b, n.Subscribe(context.Background(), "t:bench"))
	}
	return pub, all
}

// BenchmarkPublish measures one publisher fanning out to 3 nodes, deliveries
// included.
func BenchmarkPublish(b *testing.B) {
	const subscribers = 3
	pub, done := benchBus(b, subscribers)
	ctx := context.Background()
	payload := make([]byte, 64)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if err := pub.Publish(ctx, "t:bench", payload); err != nil {
			b.Fatal(err)
		}
	}
	<-done
	b.StopTimer()
	b.ReportMetric(float64(subscribers*b.N)/b.Elapsed().Seconds(), "deliveries/s")
}

// BenchmarkPublishParallel measures concurrent publishers on one node fanning
// out to 3 nodes, deliveries included.
func BenchmarkPublishParallel(b *testing.B) {
	const subscribers = 3
	pub, done := benchBus(b, subscribers)
	payload := make([]byte, 64)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			if err := pub.Publish(ctx, "t:bench", payload); err != nil {
				b.Error(err)
				return
			}
		}
	})
	<-done
	b.StopTimer()
	b.ReportMetric(float64(subscribers*b.N)/b.Elapsed().Seconds(), "deliveries/s")
}
