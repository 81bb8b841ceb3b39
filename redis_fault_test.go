package wshub

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/backplane"
	wsredis "github.com/wshub/wshub/backplane/redis"
	"github.com/wshub/wshub/internal/redistest"
)

// eventLog records backplane events as the hub passes them on.
type eventLog struct {
	mu     sync.Mutex
	events []backplane.Event
}

func (l *eventLog) hook(e backplane.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, e)
}

// has reports whether an event of kind (and, for restored, with gap) came.
func (l *eventLog) has(kind backplane.EventKind, gap bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.events {
		if e.Kind == kind && (kind != backplane.EventRestored || e.Gap == gap) {
			return true
		}
	}
	return false
}

// redisNodes starts n hubs whose backplanes, made by mk (nil for PubSub
// with defaults), reach Redis at addrs[i].
func redisNodes(t *testing.T, addrs []string, tweak func(i int, o *Options), mk redisBackplane) *cluster {
	t.Helper()
	prefix := "fault-" + randomHex() + ":"
	if mk == nil {
		mk = redisPubSub(wsredis.Options{})
	}
	i := 0
	return newClusterOn(t, len(addrs), tweak, func(t *testing.T, name string) (backplane.Backplane, func() uint64) {
		client := goredis.NewClient(&goredis.Options{Addr: addrs[i], MaxRetries: -1})
		i++
		t.Cleanup(func() { _ = client.Close() })
		bp, received, err := mk(client, prefix)
		require.NoError(t, err)
		return bp, received
	})
}

// sendUntil sends numbered messages to user from n until stop is closed,
// each with its own short deadline, and counts the outcomes.
func sendUntil(t *testing.T, n *node, user string, stop chan struct{}) (wait func() (ok, failed int)) {
	var okN, failN int
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(bg, 200*time.Millisecond)
			err := n.hub.Send(ctx, user, Text(strconv.Itoa(i)))
			cancel()
			if err != nil {
				failN++
				// A send fails while Redis is away; it never hangs
				// past its deadline and says why.
				if !errors.Is(err, backplane.ErrUnavailable) && !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("send %d: unexpected error %v", i, err)
					return
				}
				time.Sleep(5 * time.Millisecond)
			} else {
				okN++
				time.Sleep(time.Millisecond)
			}
		}
	}()
	return func() (int, int) { <-done; return okN, failN }
}

// After redis-server is killed and restarted, delivery resumes with no call
// from the application, the loss is reported through the hook and the
// counters, and sends during the outage fail within their deadline.
func TestRedisRestartResumesDeliveryAndReportsTheGap(t *testing.T) {
	srv := redistest.Start(t)
	var events eventLog
	c := redisNodes(t, []string{srv.Addr(), srv.Addr()}, func(i int, o *Options) {
		o.SendQueueLen = 100000
		if i == 1 {
			o.OnBackplaneEvent = events.hook
		}
	}, redisPubSub(wsredis.Options{ProbeInterval: 100 * time.Millisecond}))
	a, b := c.nodes[0], c.nodes[1]
	cl := dial(t, b, "u")

	stop := make(chan struct{})
	wait := sendUntil(t, a, "u", stop)
	last := -1
	// next returns the number of the next message; numbers only grow.
	next := func() int {
		v, err := strconv.Atoi(cl.nextText())
		require.NoError(t, err)
		require.Greater(t, v, last, "messages arrived out of order or twice")
		last = v
		return v
	}
	for next() < 20 {
	}

	srv.Kill(t)
	require.Eventually(t, func() bool { return events.has(backplane.EventDown, false) }, waitFor, time.Millisecond)
	require.Error(t, b.hub.Health(), "Health while Redis is down")
	srv.Restart(t)
	require.Eventually(t, func() bool { return events.has(backplane.EventRestored, true) }, waitFor, time.Millisecond)

	// Messages sent after the restore arrive without any call from the
	// application. (Sends fail at once while the node knows Redis is
	// down, so numbers may jump.)
	for i := 0; i < 20; i++ {
		next()
	}
	close(stop)
	// Sends during the outage may fail (sendUntil checks how); whether any
	// did depends on how long the restart took.
	ok, _ := wait()
	assert.GreaterOrEqual(t, ok, 40)

	st := b.hub.Stats()
	assert.GreaterOrEqual(t, st.BackplaneDowns, uint64(1))
	assert.GreaterOrEqual(t, st.BackplaneGaps, uint64(1))
	for _, n := range c.nodes {
		require.Eventually(t, func() bool { return n.hub.Health() == nil }, waitFor, 10*time.Millisecond)
	}
}

// A link that goes silent without an error (a frozen connection) is found
// by the probe, reported, and rebuilt once the network heals.
func TestSilentLinkIsFoundByTheProbeAndRebuilt(t *testing.T) {
	srv := redistest.Start(t)
	proxy := redistest.NewProxy(t, srv.Addr())
	var events eventLog
	c := redisNodes(t, []string{srv.Addr(), proxy.Addr()}, func(i int, o *Options) {
		if i == 1 {
			o.OnBackplaneEvent = events.hook
		}
	}, redisPubSub(wsredis.Options{ProbeInterval: 50 * time.Millisecond, ProbeTimeout: 200 * time.Millisecond}))
	a, b := c.nodes[0], c.nodes[1]
	cl := dial(t, b, "u")
	require.NoError(t, a.hub.Send(bg, "u", Text("before")))
	assert.Equal(t, "before", cl.nextText())
	require.NoError(t, b.hub.Health())

	proxy.Freeze()
	require.Eventually(t, func() bool { return events.has(backplane.EventDown, false) }, waitFor, time.Millisecond)
	err := b.hub.Health()
	require.ErrorIs(t, err, backplane.ErrUnavailable)
	proxy.Heal()
	require.Eventually(t, func() bool { return events.has(backplane.EventRestored, true) }, waitFor, time.Millisecond)

	require.NoError(t, a.hub.Send(bg, "u", Text("after")))
	assert.Equal(t, "after", cl.nextText())
	assert.NoError(t, b.hub.Health())
}

// While Redis is unreachable, every call that talks to it returns an error
// within its context's deadline; none hangs, none panics.
func TestCallsFailWithinTheirDeadlineWhileRedisIsDown(t *testing.T) {
	srv := redistest.Start(t)
	c := redisNodes(t, []string{srv.Addr()}, nil, nil)
	n := c.nodes[0]
	cl := dial(t, n, "u")
	srv.Kill(t)

	calls := map[string]func(ctx context.Context) error{
		"Send":        func(ctx context.Context) error { return n.hub.Send(ctx, "u", Text("x")) },
		"Broadcast":   func(ctx context.Context) error { return n.hub.Broadcast(ctx, "room", Text("x")) },
		"SendSession": func(ctx context.Context) error { return n.hub.SendSession(ctx, "node0.x-1", Text("x")) },
		"Join":        func(ctx context.Context) error { return n.hub.Join(ctx, "u", "room") },
		"Disconnect":  func(ctx context.Context) error { return n.hub.Disconnect(ctx, "u", 4000, "bye") },
	}
	for name, call := range calls {
		ctx, cancel := context.WithTimeout(bg, 300*time.Millisecond)
		done := make(chan error, 1)
		go func() { done <- call(ctx) }()
		select {
		case err := <-done:
			assert.Error(t, err, name)
			assert.True(t, errors.Is(err, backplane.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded),
				"%s: %v", name, err)
		case <-time.After(waitFor):
			t.Fatalf("%s did not return although its context ended", name)
		}
		cancel()
	}
	// A new connection cannot subscribe its user's channel: 503, not a hang.
	ctx, cancel := context.WithTimeout(bg, waitFor)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, wsURL(n.srv)+"/ws?user=newcomer", nil)
	require.Error(t, err)
	if resp != nil {
		assert.Equal(t, 503, resp.StatusCode)
	}
	// The session that was connected before is still served.
	assert.Equal(t, 1, n.hub.Stats().Sessions)
	_ = cl
}

// A message on a wshub channel that another program published is counted
// as malformed and dropped; the node goes on.
func TestForeignMessageOnARedisChannelIsDropped(t *testing.T) {
	srv := redistest.Start(t)
	c := redisNodes(t, []string{srv.Addr()}, nil, nil)
	n := c.nodes[0]
	cl := dial(t, n, "u")
	other := srv.Client(t)
	chs, err := other.PubSubChannels(bg, "*"+userPrefix+"u").Result()
	require.NoError(t, err)
	require.Len(t, chs, 1, "the node's Redis channel for user u")
	for _, p := range []string{"", "hello", "\x01\x63garbage", string(make([]byte, 70000))} {
		require.NoError(t, other.Publish(bg, chs[0], p).Err())
	}
	require.NoError(t, n.hub.Send(bg, "u", Text("fine")))
	assert.Equal(t, "fine", cl.nextText())
	assert.EqualValues(t, 4, n.hub.Stats().Malformed)
}

// Sharded pub/sub spreads a cluster's traffic over its masters.
func TestRedisClusterSpreadsTrafficOverShards(t *testing.T) {
	rc := redistest.StartCluster(t, 3)
	c := newRedisCluster(t, 2, nil, func() goredis.UniversalClient {
		return goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: rc.Addrs()})
	})
	const users = 40
	var clients []*client
	for i := 0; i < users; i++ {
		clients = append(clients, dial(t, c.nodes[i%2], fmt.Sprint("user", i)))
	}
	for i := 0; i < users; i++ {
		require.NoError(t, c.nodes[(i+1)%2].hub.Send(bg, fmt.Sprint("user", i), Text(fmt.Sprint("hi ", i))))
	}
	for i, cl := range clients {
		assert.Equal(t, fmt.Sprint("hi ", i), cl.nextText())
	}
	busy := 0
	for _, s := range rc.Servers() {
		client := goredis.NewClient(&goredis.Options{Addr: s.Addr()})
		info, err := client.Info(bg, "commandstats").Result()
		_ = client.Close()
		require.NoError(t, err)
		if n := commandCalls(info, "spublish"); n > 0 {
			busy++
		}
	}
	assert.GreaterOrEqual(t, busy, 2, "SPUBLISH reached fewer than two masters")
}

// commandCalls reads the calls count of cmd from INFO commandstats.
func commandCalls(info, cmd string) int {
	var calls int
	key := "cmdstat_" + cmd + ":calls="
	for i := 0; i+len(key) <= len(info); i++ {
		if info[i:i+len(key)] == key {
			_, _ = fmt.Sscanf(info[i+len(key):], "%d", &calls)
			return calls
		}
	}
	return 0
}
