package backplanetest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/backplane"
)

// waitTimeout bounds every wait of the suite. It is a guard against a hang,
// not a measure: a correct backend delivers long before it.
const waitTimeout = 10 * time.Second

// env is what a case works with.
type env struct {
	t     *testing.T
	ctx   context.Context
	h     Harness
	f     Features
	count int // nodes made so far, to name them in failure messages
}

// node is a started node of the harness with the recorder of its handler.
type node struct {
	backplane.Backplane
	name string
	rec  *recorder
}

// makeRaw makes a node that is not started and registers its Close.
func (e *env) makeRaw() backplane.Backplane {
	e.t.Helper()
	bp, err := e.h.MakeNode(e.ctx)
	require.NoError(e.t, err, "MakeNode")
	require.NotNil(e.t, bp, "MakeNode returned a nil Backplane")
	e.t.Cleanup(func() {
		assert.NoError(e.t, bp.Close(), "Close")
	})
	return bp
}

// node makes a node and starts it with a fresh recorder.
func (e *env) node() *node {
	e.t.Helper()
	e.count++
	n := &node{Backplane: e.makeRaw(), name: fmt.Sprintf("node %d", e.count), rec: newRecorder()}
	require.NoError(e.t, n.Start(n.rec.handle), "Start %s", n.name)
	return n
}

// nodes makes k started nodes.
func (e *env) nodes(k int) []*node {
	e.t.Helper()
	ns := make([]*node, k)
	for i := range ns {
		ns[i] = e.node()
	}
	return ns
}

// subscribe subscribes n to channels and fails the case on error.
func (e *env) subscribe(n *node, channels ...string) {
	e.t.Helper()
	require.NoError(e.t, n.Subscribe(e.ctx, channels...), "%s: Subscribe %q", n.name, channels)
}

// unsubscribe unsubscribes n from channels and fails the case on error.
func (e *env) unsubscribe(n *node, channels ...string) {
	e.t.Helper()
	require.NoError(e.t, n.Unsubscribe(e.ctx, channels...), "%s: Unsubscribe %q", n.name, channels)
}

// publish publishes payload from n and fails the case on error.
func (e *env) publish(n *node, channel string, payload []byte) {
	e.t.Helper()
	require.NoError(e.t, n.Publish(e.ctx, channel, payload), "%s: Publish to %q", n.name, channel)
}

// message is one call of a handler.
type message struct {
	channel string
	payload []byte
}

// recorder is a handler that keeps every message it is given, payloads
// included and not copied, and lets a test wait for them.
type recorder struct {
	mu   sync.Mutex
	msgs []message
	// changed is closed and replaced whenever msgs grows.
	changed chan struct{}
	// closed is set once the node's Close returned; late counts the calls
	// that came after.
	closed bool
	late   int
}

func newRecorder() *recorder {
	return &recorder{changed: make(chan struct{})}
}

// handle is the backplane.Handler.
func (r *recorder) handle(m backplane.Message) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		r.late++
	}
	r.msgs = append(r.msgs, message{channel: m.Channel, payload: m.Payload})
	close(r.changed)
	r.changed = make(chan struct{})
}

// markClosed records that the node's Close returned.
func (r *recorder) markClosed() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
}

// lateCalls returns the number of handler calls after markClosed.
func (r *recorder) lateCalls() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.late
}

// on returns the payloads received on channel so far, in arrival order.
func (r *recorder) on(channel string) [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return payloadsOn(r.msgs, channel)
}

// all returns a copy of every message received so far.
func (r *recorder) all() []message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]message(nil), r.msgs...)
}

func payloadsOn(msgs []message, channel string) [][]byte {
	var out [][]byte
	for _, m := range msgs {
		if m.channel == channel {
			out = append(out, m.payload)
		}
	}
	return out
}

// waitFor blocks until cond holds for the messages received so far, and
// fails the case if it does not within waitTimeout. what names the wait in
// the failure message.
func (r *recorder) waitFor(t *testing.T, what string, cond func(msgs []message) bool) {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		ok := cond(r.msgs)
		changed, have := r.changed, len(r.msgs)
		r.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			require.FailNowf(t, "timed out", "waited %v for %s; %d messages received in all", waitTimeout, what, have)
		}
	}
}

// waitCount waits until at least k messages arrived on channel.
func (r *recorder) waitCount(t *testing.T, n *node, channel string, k int) {
	t.Helper()
	r.waitFor(t, fmt.Sprintf("%d messages on %q at %s", k, channel, n.name), func(msgs []message) bool {
		return len(payloadsOn(msgs, channel)) >= k
	})
}

// waitPayload waits until payload arrived on channel.
func (r *recorder) waitPayload(t *testing.T, n *node, channel string, payload string) {
	t.Helper()
	r.waitFor(t, fmt.Sprintf("%q on %q at %s", payload, channel, n.name), func(msgs []message) bool {
		for _, p := range payloadsOn(msgs, channel) {
			if string(p) == payload {
				return true
			}
		}
		return false
	})
}

// strs converts payloads to strings for readable comparisons.
func strs(payloads [][]byte) []string {
	out := make([]string, len(payloads))
	for i, p := range payloads {
		out[i] = string(p)
	}
	return out
}
