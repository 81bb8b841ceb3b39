package wshub

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/backplane"
	wsredis "github.com/wshub/wshub/backplane/redis"
	"github.com/wshub/wshub/internal/envelope"
	"github.com/wshub/wshub/internal/redistest"
)

// A cluster-wide Join is in effect on every node before anything sent to
// the user after it: once bob's device has a notice sent after the Join,
// the room's next broadcast reaches him. Each of 300 rounds joins a new
// room, so every round waits for a new subscription.
func TestJoinIsInEffectBeforeWhatFollowsIt(t *testing.T) {
	srv := redistest.Start(t)
	makers := map[string]clusterMaker{
		"memory": newCluster,
		"redis pubsub": func(t *testing.T, n int, tweak func(int, *Options)) *cluster {
			return newRedisCluster(t, n, tweak, func() goredis.UniversalClient {
				return goredis.NewClient(&goredis.Options{Addr: srv.Addr()})
			})
		},
		"redis streams": func(t *testing.T, n int, tweak func(int, *Options)) *cluster {
			return newRedisClusterMode(t, n, tweak, redisStreams(wsredis.StreamsOptions{}), func() goredis.UniversalClient {
				return goredis.NewClient(&goredis.Options{Addr: srv.Addr()})
			})
		},
	}
	for name, mk := range makers {
		t.Run(name, func(t *testing.T) {
			c := mk(t, 2, nil)
			a, b := c.nodes[0], c.nodes[1]
			bob := dial(t, b, "bob")
			const rounds = 300
			for i := 0; i < rounds; i++ {
				room := fmt.Sprint("room-", i)
				require.NoError(t, a.hub.Join(bg, "bob", room))
				require.NoError(t, a.hub.Send(bg, "bob", Text("joined "+room)))
				require.Equal(t, "joined "+room, bob.nextText())
				require.NoError(t, a.hub.Broadcast(bg, room, Text("in "+room)))
				require.Equal(t, "in "+room, bob.nextText(), "the broadcast after the notice reached bob")
			}
		})
	}
}

// What a user's channel holds back behind a Join is bounded: a flood to
// the user while the subscription cannot be confirmed goes through, in
// order, instead of growing the node.
func TestJoinGateIsBounded(t *testing.T) {
	c, stuck := stuckCluster(t, func(o *Options) { o.SendQueueLen = 3 * gateMessages })
	defer stuck.release()
	a, b := c.nodes[0], c.nodes[1]
	bob := dial(t, b, "bob")
	// From now on b's subscriptions cannot be confirmed: its interest
	// manager waits on a backplane call that does not return.
	stuck.blocked.Store(true)

	require.NoError(t, a.hub.Join(bg, "bob", "stuck"))
	n := gateMessages + 10
	for i := 0; i < n; i++ {
		require.NoError(t, a.hub.Send(bg, "bob", Text(fmt.Sprint(i))))
	}
	for i := 0; i < n; i++ {
		require.Equal(t, fmt.Sprint(i), bob.nextText(), "in order")
	}
}

// blockableSubscribe is a backplane whose Subscribe, once blocked, waits
// until block is closed (release) or its context ends.
type blockableSubscribe struct {
	backplane.Backplane
	blocked atomic.Bool
	block   chan struct{}
	once    sync.Once
}

func (b *blockableSubscribe) release() { b.once.Do(func() { close(b.block) }) }

// stuckCluster starts two hubs on one bus, the second on a backplane whose
// Subscribe can be blocked, with a SubscribeTimeout that never ends the
// wait. tweak may change both nodes' options.
func stuckCluster(t *testing.T, tweak func(o *Options)) (*cluster, *blockableSubscribe) {
	t.Helper()
	stuck := &blockableSubscribe{block: make(chan struct{})}
	c := newCluster(t, 2, func(i int, o *Options) {
		o.SubscribeTimeout = time.Hour
		tweak(o)
		if i == 1 {
			stuck.Backplane = o.Backplane
			o.Backplane = stuck
		}
	})
	return c, stuck
}

func (b *blockableSubscribe) Subscribe(ctx context.Context, channels ...string) error {
	if b.blocked.Load() {
		select {
		case <-b.block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return b.Backplane.Subscribe(ctx, channels...)
}

// Forged messages that arrive while a Join waits for its subscription are
// dropped before they take room behind it, so they cannot end the wait
// early and break the Join's ordering.
func TestForgedMessagesCannotEndAJoinWait(t *testing.T) {
	keys := [][]byte{[]byte("0123456789abcdef0123456789abcdef")}
	c, stuck := stuckCluster(t, func(o *Options) { o.SigningKeys = keys })
	defer stuck.release()
	a, b := c.nodes[0], c.nodes[1]
	bob := dial(t, b, "bob")
	stuck.blocked.Store(true)
	require.NoError(t, a.hub.Join(bg, "bob", "room"))
	require.Eventually(t, func() bool { return b.hub.gates.holding(userPrefix + "bob") }, waitFor, time.Millisecond)

	outsider, err := c.bus.NewNode("outsider")
	require.NoError(t, err)
	t.Cleanup(func() { _ = outsider.Close() })
	forged := (&envelope.Envelope{Op: envelope.OpUser, Target: "bob", Payload: []byte("forged")}).Encode()
	n := gateMessages + 10
	for i := 0; i < n; i++ {
		require.NoError(t, outsider.Publish(bg, userPrefix+"bob", forged))
	}
	require.Eventually(t, func() bool { return b.hub.Stats().Forged == uint64(n) }, waitFor, time.Millisecond)
	require.True(t, b.hub.gates.holding(userPrefix+"bob"), "the Join still waits for its subscription")

	require.NoError(t, a.hub.Send(bg, "bob", Text("after")))
	stuck.release()
	require.Equal(t, "after", bob.nextText(), "nothing forged reached bob")
}
