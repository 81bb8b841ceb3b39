package wshub

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/internal/envelope"
)

// The hub leaves a backplane it was given open, and unsubscribed.
func testCloseLeavesAGivenBackplaneOpenAndUnsubscribed(t *testing.T, newCluster clusterMaker) {
	c := newCluster(t, 2, nil)
	n, other := c.nodes[0], c.nodes[1]
	dial(t, n, "u")
	require.NoError(t, n.hub.Close(bg))
	before := n.received()
	// Still open: it can subscribe (a closed node returns ErrClosed).
	err := n.bp.Subscribe(bg, "sync")
	require.NotErrorIs(t, err, backplane.ErrClosed, "the hub closed a backplane it was given")
	require.NoError(t, err)
	// Nothing else is subscribed: a flush marker on "sync", published last,
	// is the only delivery (the bus keeps one order per receiving node).
	arrived := make(chan struct{})
	n.hub.mu.Lock()
	n.hub.flushes["probe"] = arrived
	n.hub.mu.Unlock()
	marker := (&envelope.Envelope{Op: envelope.OpFlush, Target: "probe"}).Encode()
	require.NoError(t, other.bp.Publish(bg, userPrefix+"u", []byte("x")))
	require.NoError(t, other.bp.Publish(bg, nodePrefix+"node0", []byte("x")))
	require.NoError(t, other.bp.Publish(bg, "sync", marker))
	select {
	case <-arrived:
	case <-time.After(waitFor):
		t.Fatal("the marker did not arrive")
	}
	assert.Equal(t, before+1, n.received(), "node0 is still subscribed after Close")
}
