package wshub

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/backplane/memory"
	wsredis "github.com/wshub/wshub/backplane/redis"
	"github.com/wshub/wshub/internal/redistest"
)

// The environment that makes the test binary a presence child node (see
// TestMain): the Redis address and key prefix it uses.
const (
	childRedisEnv  = "WSHUB_PRESENCE_CHILD_REDIS"
	childPrefixEnv = "WSHUB_PRESENCE_CHILD_PREFIX"
)

// childTTL is the presence time to live of the child and of the test's
// own node: short, so that the kill is noticed quickly.
const childTTL = time.Second

// runPresenceChild serves a hub on Redis until it is killed (or a minute
// passes): every session joins "room". It prints the address it listens
// on, then nothing.
func runPresenceChild(addr, prefix string) {
	client := goredis.NewClient(&goredis.Options{Addr: addr})
	bp, err := wsredis.NewPubSub(client, &wsredis.Options{Prefix: prefix, PresenceTTL: childTTL, Logger: quiet})
	if err != nil {
		panic(err)
	}
	h, err := New(&Options{
		NodeID:       "child",
		Backplane:    bp,
		Authenticate: userFromQuery,
		Logger:       quiet,
		OnConnect:    func(ctx context.Context, s *Session) error { return s.Join(ctx, "room") },
	})
	if err != nil {
		panic(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	os.Stdout.WriteString("listening " + ln.Addr().String() + "\n")
	go func() { _ = http.Serve(ln, h) }()
	time.Sleep(time.Minute) // stops by itself if the test forgot it
	os.Exit(0)
}

// TestPresenceOfAKilledNodeExpires: a node killed with SIGKILL never
// writes the removal of its sessions; the other nodes remove them within
// the documented bound (the time to live, a third of it and a second), and
// report the user offline and out of its topic once.
func TestPresenceOfAKilledNodeExpires(t *testing.T) {
	srv := redistest.Start(t)
	prefix := "kill-" + randomHex() + ":"
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childRedisEnv+"="+srv.Addr(), childPrefixEnv+"="+prefix)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(t, err, "the child did not start")
	childAddr := strings.TrimSpace(strings.TrimPrefix(line, "listening "))

	var mu sync.Mutex
	var events []PresenceEvent
	c := redisNodes(t, []string{srv.Addr()}, func(_ int, o *Options) {
		o.OnPresence = func(ev PresenceEvent) {
			mu.Lock()
			events = append(events, ev)
			mu.Unlock()
		}
	}, redisPubSubAt(prefix, wsredis.Options{PresenceTTL: childTTL}))
	h := c.nodes[0].hub

	dialURL(t, "ws://"+childAddr+"/?user=bob")
	require.Eventually(t, func() bool {
		n, err := h.Online(bg, "bob")
		m, _ := h.TopicCount(bg, "room")
		return err == nil && n == 1 && m == 1
	}, waitFor, 5*time.Millisecond, "the child's session is not in presence")

	killed := time.Now()
	require.NoError(t, cmd.Process.Kill())
	_, _ = cmd.Process.Wait()
	require.Eventually(t, func() bool {
		n, err := h.Online(bg, "bob")
		m, _ := h.TopicCount(bg, "room")
		return err == nil && n == 0 && m == 0
	}, waitFor, 5*time.Millisecond, "the killed node's session is still in presence")
	t.Logf("removed %v after the kill (bound %v)", time.Since(killed).Round(time.Millisecond), childTTL+childTTL/3+time.Second)

	count := func(kind PresenceKind) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, ev := range events {
			if ev.Kind == kind && ev.UserID == "bob" {
				n++
			}
		}
		return n
	}
	require.Eventually(t, func() bool { return count(PresenceOffline) == 1 && count(PresenceLeft) == 1 },
		waitFor, 5*time.Millisecond, "no offline and left events from the node that removed them")
	assert.Equal(t, 0, count(PresenceOnline), "this node wrote no online event: the child did")
}

// TestPresenceRepairsAfterARedisRestartWithoutPersistence: a Redis that
// restarts with nothing of the record (no persistence) is written again
// by the nodes, without a call from the application, within one refresh
// of their lease: every session counts again, in its topics too.
func TestPresenceRepairsAfterARedisRestartWithoutPersistence(t *testing.T) {
	srv := redistest.Start(t)
	c := redisNodes(t, []string{srv.Addr(), srv.Addr()}, func(_ int, o *Options) {
		o.OnConnect = func(ctx context.Context, s *Session) error { return s.Join(ctx, "room") }
	}, redisPubSub(wsredis.Options{ProbeInterval: 100 * time.Millisecond, PresenceTTL: childTTL}))
	a, b := c.nodes[0], c.nodes[1]
	dial(t, a, "alice")
	dial(t, b, "bob")
	dial(t, b, "bob")
	counts := func() (alice, bob, room int) {
		alice, _ = a.hub.Online(bg, "alice")
		bob, _ = a.hub.Online(bg, "bob")
		room, _ = b.hub.TopicCount(bg, "room")
		return
	}
	require.Eventually(t, func() bool { al, bo, r := counts(); return al == 1 && bo == 2 && r == 2 }, waitFor, 5*time.Millisecond)

	srv.Kill(t)
	srv.Restart(t) // empty: the record is gone
	require.Eventually(t, func() bool { al, bo, r := counts(); return al == 1 && bo == 2 && r == 2 }, waitFor, 5*time.Millisecond,
		"presence was not written again after Redis lost it")
	m, next, err := a.hub.TopicMembers(bg, "room", "", 10)
	require.NoError(t, err)
	assert.Empty(t, next)
	assert.Equal(t, []Member{{UserID: "alice", Sessions: 1}, {UserID: "bob", Sessions: 2}}, m)
}

// TestUpgradeWhilePresenceIsUnreachable: while the presence record cannot
// be reached (the node is partitioned), an upgrade whose user channel is
// already subscribed completes: its presence write was attempted, and is
// retried later, rather than holding the handshake until SubscribeTimeout.
func TestUpgradeWhilePresenceIsUnreachable(t *testing.T) {
	bus := memory.NewBus()
	c := newClusterOnBus(t, bus, 1, func(_ int, o *Options) { o.SubscribeTimeout = time.Hour })
	n := c.nodes[0]
	dial(t, n, "alice")
	require.Eventually(t, func() bool { k, _ := n.hub.Online(bg, "alice"); return k == 1 }, waitFor, 5*time.Millisecond)

	require.NoError(t, bus.Partition("node0"))
	// The first upgrade's write fails, which makes the next write refresh
	// the lease first; the second upgrade's refresh fails too.
	for i := range 2 {
		ctx, cancel := context.WithTimeout(bg, waitFor)
		conn, _, err := websocket.Dial(ctx, wsURL(n.srv)+"/ws?user=alice", nil)
		cancel()
		require.NoError(t, err, "upgrade %d waited for an unreachable presence record", i)
		defer conn.CloseNow()
	}

	require.Eventually(t, func() bool { return n.hub.Metrics().PresenceFailing }, waitFor, 5*time.Millisecond,
		"the metrics do not say that presence writes fail")
	assert.Equal(t, 1, n.hub.Metrics().PresenceEntries, "alice's entry: one user, no topic")

	require.NoError(t, bus.Heal("node0"))
	require.Eventually(t, func() bool { return !n.hub.Metrics().PresenceFailing }, waitFor, 5*time.Millisecond)
	require.Eventually(t, func() bool { k, _ := n.hub.Online(bg, "alice"); return k == 3 }, waitFor, 5*time.Millisecond,
		"the write is retried once the record is reachable")
}
