package backplanetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/backplane"
)

// About the checks that something did NOT arrive: no wait can prove a
// negative, so the suite publishes a later message from the same publisher
// and waits for it. On the same channel, the order per publisher proves that
// the earlier message would have arrived first. Across channels order is not
// promised, so such a check can only pass falsely (a wrong backend that
// delivers late goes unnoticed), never fail a correct backend.

// testDeliveryAcrossNodes: a publish reaches every subscribed node, the
// publisher included, exactly once, byte for byte, with its channel name.
func testDeliveryAcrossNodes(t *testing.T, e *env) {
	const ch = "t:delivery"
	ns := e.nodes(3)
	for _, n := range ns {
		e.subscribe(n, ch)
	}
	e.publish(ns[0], ch, []byte("hello"))
	// The same publisher on the same channel: once "sync" arrived, a duplicate
	// "hello" would have arrived before it.
	e.publish(ns[0], ch, []byte("sync"))
	for _, n := range ns {
		n.rec.waitPayload(t, n, ch, "sync")
		msgs := n.rec.all()
		require.Len(t, msgs, 2, "%s: messages received", n.name)
		assert.Equal(t, ch, msgs[0].channel, "%s: channel name", n.name)
		assert.Equal(t, "hello", string(msgs[0].payload), "%s: payload", n.name)
		assert.Equal(t, "sync", string(msgs[1].payload), "%s: second payload", n.name)
	}
}

// testNoDeliveryWithoutInterest: a node that is not subscribed to a channel
// receives nothing published on it.
func testNoDeliveryWithoutInterest(t *testing.T, e *env) {
	const ch, syncCh = "t:interest", "t:interest-sync"
	ns := e.nodes(3)
	a, b, c := ns[0], ns[1], ns[2]
	e.subscribe(a, ch)
	e.subscribe(b, ch)
	e.subscribe(c, syncCh)
	e.publish(a, ch, []byte("not for c"))
	e.publish(a, syncCh, []byte("sync"))
	a.rec.waitCount(t, a, ch, 1)
	b.rec.waitCount(t, b, ch, 1)
	c.rec.waitPayload(t, c, syncCh, "sync") // cross-channel: can only pass falsely
	assert.Empty(t, c.rec.on(ch), "%s is not subscribed to %q", c.name, ch)

	// Now a barrier on the same channel: once c subscribes, a message a
	// publishes afterwards arrives after anything a published before on ch
	// (order per publisher, per channel), so it must be the only one.
	e.subscribe(c, ch)
	e.publish(a, ch, []byte("later"))
	c.rec.waitPayload(t, c, ch, "later")
	assert.Equal(t, []string{"later"}, strs(c.rec.on(ch)), "%s got a message published before it subscribed", c.name)
}

// testUnsubscribe: Unsubscribe stops delivery, subscriptions are a set,
// unsubscribing an unknown channel is not an error and a channel can be
// subscribed again.
func testUnsubscribe(t *testing.T, e *env) {
	const ch, syncCh = "t:unsub", "t:unsub-sync"
	ns := e.nodes(3)
	a, b, c := ns[0], ns[1], ns[2]
	e.subscribe(a, ch) // a stays subscribed and sees everything
	e.subscribe(b, ch)
	e.subscribe(b, ch) // twice: still one subscription
	e.subscribe(c, ch)
	e.subscribe(b, syncCh)
	e.subscribe(c, syncCh)

	e.publish(a, ch, []byte("before"))
	for _, n := range ns {
		n.rec.waitCount(t, n, ch, 1)
	}

	e.unsubscribe(b, ch) // once, after subscribing twice
	e.unsubscribe(c, ch)
	e.unsubscribe(c, ch) // again: it no longer holds it
	e.unsubscribe(c, "t:never-subscribed")

	e.publish(a, ch, []byte("after"))
	e.publish(a, syncCh, []byte("sync"))
	a.rec.waitPayload(t, a, ch, "after")
	for _, n := range []*node{b, c} {
		n.rec.waitPayload(t, n, syncCh, "sync") // cross-channel: can only pass falsely
		assert.Equal(t, []string{"before"}, strs(n.rec.on(ch)), "%s after Unsubscribe", n.name)
	}
	assert.Equal(t, []string{"before", "after"}, strs(a.rec.on(ch)), "%s stayed subscribed", a.name)

	// Subscribing again works.
	e.subscribe(b, ch)
	e.publish(a, ch, []byte("again"))
	b.rec.waitPayload(t, b, ch, "again")
	assert.Equal(t, []string{"before", "again"}, strs(b.rec.on(ch)), "%s subscribed again", b.name)
}

// testManyChannels: one Subscribe or Unsubscribe call can carry many channels.
func testManyChannels(t *testing.T, e *env) {
	const k, syncCh = 100, "t:many-sync"
	channels := make([]string, k)
	for i := range channels {
		channels[i] = "t:many-" + strconv.Itoa(i)
	}
	ns := e.nodes(3)
	a, b, c := ns[0], ns[1], ns[2]
	e.subscribe(b, channels...)
	e.subscribe(c, append([]string{syncCh}, channels...)...)

	for _, ch := range channels {
		e.publish(a, ch, []byte("first "+ch))
	}
	for _, n := range []*node{b, c} {
		for _, ch := range channels {
			n.rec.waitCount(t, n, ch, 1)
		}
		for _, ch := range channels {
			assert.Equal(t, []string{"first " + ch}, strs(n.rec.on(ch)), "%s on %q", n.name, ch)
		}
	}

	e.unsubscribe(c, channels...)
	for _, ch := range channels {
		e.publish(a, ch, []byte("second "+ch))
	}
	e.publish(a, syncCh, []byte("sync"))
	for _, ch := range channels {
		b.rec.waitCount(t, b, ch, 2)
	}
	c.rec.waitPayload(t, c, syncCh, "sync") // cross-channel: can only pass falsely
	for _, ch := range channels {
		assert.Equal(t, []string{"first " + ch}, strs(c.rec.on(ch)), "%s after Unsubscribe, on %q", c.name, ch)
	}
}

// seqPayload is message i of publisher p.
func seqPayload(p string, i int) []byte {
	return []byte(p + ":" + strconv.Itoa(i))
}

// checkSequences checks that each of the publishers' k messages arrived
// exactly once and in publishing order.
func checkSequences(t *testing.T, n *node, channel string, publishers []string, k int) {
	t.Helper()
	got := make(map[string][]int)
	for _, p := range n.rec.on(channel) {
		pub, seq, ok := strings.Cut(string(p), ":")
		i, err := strconv.Atoi(seq)
		if !ok || err != nil {
			assert.Failf(t, "unexpected payload", "%s: %q on %q", n.name, p, channel)
			continue
		}
		got[pub] = append(got[pub], i)
	}
	want := make([]int, k)
	for i := range want {
		want[i] = i
	}
	for _, pub := range publishers {
		assert.Equal(t, want, got[pub], "%s: sequence of publisher %s", n.name, pub)
	}
}

// testOrderPerPublisher: the messages of one publisher on one channel arrive
// in the order they were published.
func testOrderPerPublisher(t *testing.T, e *env) {
	const ch, k = "t:order", 1000
	ns := e.nodes(3)
	a := ns[0]
	for _, n := range ns[1:] {
		e.subscribe(n, ch)
	}
	for i := range k {
		e.publish(a, ch, seqPayload("a", i))
	}
	for _, n := range ns[1:] {
		n.rec.waitCount(t, n, ch, k)
		checkSequences(t, n, ch, []string{"a"}, k)
	}
}

// testOrderConcurrentPublishers: with two publishers at once, each one's
// messages stay in order.
func testOrderConcurrentPublishers(t *testing.T, e *env) {
	const ch, k = "t:order2", 500
	ns := e.nodes(3)
	for _, n := range ns {
		e.subscribe(n, ch)
	}
	pubs := map[string]*node{"a": ns[0], "b": ns[1]}
	errs := make(chan error, len(pubs))
	var wg sync.WaitGroup
	for name, n := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range k {
				if err := n.Publish(e.ctx, ch, seqPayload(name, i)); err != nil {
					errs <- fmt.Errorf("%s: Publish %d: %w", n.name, i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	for _, n := range ns {
		n.rec.waitCount(t, n, ch, 2*k)
		checkSequences(t, n, ch, []string{"a", "b"}, k)
	}
}

// testPayloads: odd payloads arrive byte for byte.
func testPayloads(t *testing.T, e *env) {
	const ch = "t:payloads"
	allBytes := make([]byte, 256)
	for i := range allBytes {
		allBytes[i] = byte(i)
	}
	large := make([]byte, e.f.MaxPayload)
	rng := rand.NewChaCha8([32]byte{'w', 's', 'h', 'u', 'b'})
	_, _ = rng.Read(large) // never fails
	cases := []struct {
		name    string
		payload []byte
	}{
		{"empty", []byte{}},
		{"all 256 byte values", allBytes},
		{"zero bytes", make([]byte, 64)},
		{fmt.Sprintf("MaxPayload (%d random bytes)", len(large)), large},
	}

	ns := e.nodes(3)
	for _, n := range ns[1:] {
		e.subscribe(n, ch)
	}
	for _, c := range cases {
		e.publish(ns[0], ch, c.payload)
	}
	for _, n := range ns[1:] {
		n.rec.waitCount(t, n, ch, len(cases))
		got := n.rec.on(ch)
		require.Len(t, got, len(cases), "%s: messages received", n.name)
		for i, c := range cases {
			assert.Truef(t, bytes.Equal(c.payload, got[i]),
				"%s: payload %s: got %d bytes, want %d, equal prefix %d",
				n.name, c.name, len(got[i]), len(c.payload), commonPrefix(c.payload, got[i]))
		}
	}
}

func commonPrefix(a, b []byte) int {
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	return i
}

// testHandlerKeepsPayload: a payload the handler keeps is not modified by
// later messages (a backend must not reuse the buffer it handed out).
func testHandlerKeepsPayload(t *testing.T, e *env) {
	const ch, k, size = "t:keep", 200, 64
	ns := e.nodes(3)
	for _, n := range ns[1:] {
		e.subscribe(n, ch)
	}
	for i := range k {
		e.publish(ns[0], ch, bytes.Repeat([]byte{byte(i)}, size))
	}
	for _, n := range ns[1:] {
		n.rec.waitCount(t, n, ch, k)
		got := n.rec.on(ch)
		require.Len(t, got, k, "%s: messages received", n.name)
		for i, p := range got {
			if !assert.Equalf(t, bytes.Repeat([]byte{byte(i)}, size), p, "%s: kept payload %d", n.name, i) {
				return
			}
		}
	}
}

// testConcurrentOperations: Publish, Subscribe and Unsubscribe called at once
// from many goroutines on several nodes neither fail nor race, and delivery
// still works afterwards.
func testConcurrentOperations(t *testing.T, e *env) {
	const goroutines, ops, channels = 8, 200, 8
	ns := e.nodes(3)
	errs := make(chan error, goroutines)
	var wg sync.WaitGroup
	for g := range goroutines {
		n := ns[g%len(ns)]
		rng := rand.New(rand.NewPCG(uint64(g), 0x5eed))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range ops {
				ch := "t:conc-" + strconv.Itoa(rng.IntN(channels))
				var err error
				switch op := rng.IntN(4); op {
				case 0, 1:
					err = n.Publish(e.ctx, ch, []byte(fmt.Sprintf("g%d-%d", g, i)))
				case 2:
					err = n.Subscribe(e.ctx, ch, "t:conc-"+strconv.Itoa(rng.IntN(channels)))
				default:
					err = n.Unsubscribe(e.ctx, ch)
				}
				if err != nil {
					errs <- fmt.Errorf("%s, goroutine %d, op %d on %q: %w", n.name, g, i, ch, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}

	const sanity = "t:conc-sanity"
	for _, n := range ns {
		e.subscribe(n, sanity)
	}
	e.publish(ns[1], sanity, []byte("still works"))
	for _, n := range ns {
		n.rec.waitPayload(t, n, sanity, "still works")
	}
}

// testClosed: after Close every method fails with ErrClosed, Close again
// returns nil and the handler is no longer called.
func testClosed(t *testing.T, e *env) {
	const ch = "t:closed"
	ns := e.nodes(3)
	a, b, c := ns[0], ns[1], ns[2]
	e.subscribe(a, ch)
	e.subscribe(c, ch)
	e.publish(b, ch, []byte("before"))
	a.rec.waitPayload(t, a, ch, "before")
	c.rec.waitPayload(t, c, ch, "before")

	require.NoError(t, a.Close(), "Close")
	a.rec.markClosed()
	require.NoError(t, a.Close(), "second Close")

	assertClosed(t, e.ctx, a.Backplane)
	assert.ErrorIs(t, a.Start(a.rec.handle), backplane.ErrClosed, "Start after Close")

	// c receives what a would have: a's handler must not have been called.
	e.publish(b, ch, []byte("after"))
	c.rec.waitPayload(t, c, ch, "after")
	assert.Zero(t, a.rec.lateCalls(), "handler calls after Close returned")
	assert.Equal(t, []string{"before"}, strs(a.rec.on(ch)), "messages of the closed node")
}

// testCloseBeforeStart: a node closed before Start is closed too.
func testCloseBeforeStart(t *testing.T, e *env) {
	bp := e.makeRaw()
	require.NoError(t, bp.Close(), "Close")
	require.NoError(t, bp.Close(), "second Close")
	assertClosed(t, e.ctx, bp)
	assert.ErrorIs(t, bp.Start(func(backplane.Message) {}), backplane.ErrClosed, "Start after Close")
}

// assertClosed checks that Publish, Subscribe and Unsubscribe fail with
// ErrClosed.
func assertClosed(t *testing.T, ctx context.Context, bp backplane.Backplane) {
	t.Helper()
	assert.ErrorIs(t, bp.Publish(ctx, "t:x", []byte("x")), backplane.ErrClosed, "Publish after Close")
	assert.ErrorIs(t, bp.Subscribe(ctx, "t:x"), backplane.ErrClosed, "Subscribe after Close")
	assert.ErrorIs(t, bp.Unsubscribe(ctx, "t:x"), backplane.ErrClosed, "Unsubscribe after Close")
}

// testBadInput: invalid calls return the documented errors.
func testBadInput(t *testing.T, e *env) {
	a := e.node()
	ctx := e.ctx
	checks := []struct {
		name string
		err  error
		want error
	}{
		{"Publish to empty channel", a.Publish(ctx, "", []byte("x")), backplane.ErrInvalidChannel},
		{"Subscribe to empty channel", a.Subscribe(ctx, ""), backplane.ErrInvalidChannel},
		{"Subscribe with an empty channel among others", a.Subscribe(ctx, "t:ok", ""), backplane.ErrInvalidChannel},
		{"Unsubscribe from empty channel", a.Unsubscribe(ctx, ""), backplane.ErrInvalidChannel},
		{"Start twice", a.Start(a.rec.handle), backplane.ErrStarted},
	}
	for _, c := range checks {
		assert.ErrorIs(t, c.err, c.want, c.name)
	}

	canceled, cancel := context.WithCancel(ctx)
	cancel()
	err := a.Publish(canceled, "t:ok", []byte("x"))
	assert.Truef(t, errors.Is(err, context.Canceled), "Publish with a canceled context: got %v, want context.Canceled", err)

	// The node still works.
	e.subscribe(a, "t:ok")
	e.publish(a, "t:ok", []byte("fine"))
	a.rec.waitPayload(t, a, "t:ok", "fine")
}
