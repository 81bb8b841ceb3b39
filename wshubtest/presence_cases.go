package wshubtest

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub"
)

// presenceCases run when Features.Presence is set.
var presenceCases = []struct {
	name string
	run  func(t *testing.T, e *env)
}{
	{"PresenceAcrossNodes", testPresenceAcrossNodes},
	{"PresenceEventsOncePerChange", testPresenceEventsOncePerChange},
	{"PresenceMessageToTheTopic", testPresenceMessageToTheTopic},
	{"ClusterSessionsPerUser", testClusterSessionsPerUser},
	{"JoinAcknowledged", testJoinAcknowledged},
	{"PresenceOfACutNodeExpires", testPresenceOfACutNodeExpires},
}

// presenceWait bounds the waits for presence to settle: writes are
// batched, and a cut node's entries go after the harness's time to live.
func (e *env) presenceWait() time.Duration {
	return Timeout + 4*e.f.PresenceTTL
}

// online waits until hub i counts want sessions of user.
func (e *env) online(t *testing.T, c *Cluster, i int, user string, want int) {
	t.Helper()
	var got int
	var err error
	ok := assert.Eventually(t, func() bool {
		got, err = c.Hub(i).Online(bg, user)
		return err == nil && got == want
	}, e.presenceWait(), 5*time.Millisecond)
	if !ok {
		t.Fatalf("node%d: Online(%q) = %d, %v; want %d", i, user, got, err, want)
	}
}

// members returns every member of topic, read by hub i in pages of limit.
func members(t *testing.T, c *Cluster, i int, topic string, limit int) map[string]int {
	t.Helper()
	all := make(map[string]int)
	cursor := ""
	for pages := 0; ; pages++ {
		require.Less(t, pages, 10000, "TopicMembers never ends")
		page, next, err := c.Hub(i).TopicMembers(bg, topic, cursor, limit)
		require.NoError(t, err)
		require.LessOrEqual(t, len(page), limit, "a page over its limit")
		for _, m := range page {
			_, dup := all[m.UserID]
			require.False(t, dup, "member %q listed twice", m.UserID)
			all[m.UserID] = m.Sessions
		}
		if next == "" {
			return all
		}
		cursor = next
	}
}

func testPresenceAcrossNodes(t *testing.T, e *env) {
	c := e.cluster(3, func(_ int, o *wshub.Options) {
		o.OnConnect = func(ctx context.Context, s *wshub.Session) error {
			if s.UserID() != "" {
				return s.Join(ctx, "room")
			}
			return nil
		}
	})
	a0 := c.Dial(t, 0, "alice")
	// Once the handshake completes, every node counts the session: no
	// wait.
	for i := range 3 {
		n, err := c.Hub(i).Online(bg, "alice")
		require.NoError(t, err)
		require.Equal(t, 1, n, "node%d: Online right after the handshake", i)
	}
	c.Dial(t, 1, "alice")
	c.Dial(t, 1, "bob")
	c.Dial(t, 0, "") // anonymous: in the topic, not counted
	for i := range 3 {
		e.online(t, c.Cluster, i, "alice", 2)
		e.online(t, c.Cluster, i, "bob", 1)
		e.online(t, c.Cluster, i, "carol", 0)
	}
	require.Eventually(t, func() bool {
		n, err := c.Hub(2).TopicCount(bg, "room")
		return err == nil && n == 2
	}, e.presenceWait(), 5*time.Millisecond, "TopicCount from a node that holds no session")
	assert.Equal(t, map[string]int{"alice": 2, "bob": 1}, members(t, c.Cluster, 2, "room", 1))

	// Many members, paged.
	for i := range 120 {
		c.Dial(t, i%2, fmt.Sprintf("user%03d", i))
	}
	require.Eventually(t, func() bool {
		n, _ := c.Hub(2).TopicCount(bg, "room")
		return n == 122
	}, e.presenceWait(), 5*time.Millisecond)
	all := members(t, c.Cluster, 2, "room", 50)
	require.Len(t, all, 122)
	names := make([]string, 0, len(all))
	for n := range all {
		names = append(names, n)
	}
	sort.Strings(names)
	assert.Equal(t, "alice", names[0])

	// Leaving a topic and closing a session are both seen everywhere.
	require.NoError(t, c.Hub(2).Leave(bg, "bob", "room", wshub.Acknowledged()))
	require.Eventually(t, func() bool {
		m := members(t, c.Cluster, 0, "room", 1000)
		_, bob := m["bob"]
		return !bob && m["alice"] == 2
	}, e.presenceWait(), 5*time.Millisecond)
	e.online(t, c.Cluster, 2, "bob", 1) // still connected
	a0.Close()
	e.online(t, c.Cluster, 2, "alice", 1)

	_, err := c.Hub(0).Online(bg, "")
	assert.ErrorIs(t, err, wshub.ErrInvalidUserID)
	_, _, err = c.Hub(0).TopicMembers(bg, "room", "", 5000)
	assert.ErrorIs(t, err, wshub.ErrInvalidOptions, "a page over the largest limit")
}

// presenceLog records presence events from every node.
type presenceLog struct {
	mu sync.Mutex
	ev []wshub.PresenceEvent
}

func (l *presenceLog) hook(ev wshub.PresenceEvent) {
	l.mu.Lock()
	l.ev = append(l.ev, ev)
	l.mu.Unlock()
}

func (l *presenceLog) count(kind wshub.PresenceKind, user, topic string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, ev := range l.ev {
		if ev.Kind == kind && ev.UserID == user && ev.Topic == topic {
			n++
		}
	}
	return n
}

func testPresenceEventsOncePerChange(t *testing.T, e *env) {
	var log presenceLog
	var sessions sessionLog
	c := e.cluster(2, func(_ int, o *wshub.Options) {
		o.OnPresence = log.hook
		o.OnConnect = sessions.hook
	})
	a := c.Dial(t, 0, "alice")
	b := c.Dial(t, 1, "alice")
	e.online(t, c.Cluster, 0, "alice", 2)
	require.NoError(t, sessions.get(t, "alice", 0).Join(bg, "room"))
	require.NoError(t, sessions.get(t, "alice", 1).Join(bg, "room"))
	require.Eventually(t, func() bool {
		n, _ := c.Hub(0).TopicCount(bg, "room")
		m := members(t, c.Cluster, 0, "room", 10)
		return n == 1 && m["alice"] == 2
	}, e.presenceWait(), 5*time.Millisecond)
	a.Close()
	e.online(t, c.Cluster, 0, "alice", 1)
	b.Close()
	e.online(t, c.Cluster, 0, "alice", 0)
	require.Eventually(t, func() bool {
		return log.count(wshub.PresenceOffline, "alice", "") == 1 && log.count(wshub.PresenceLeft, "alice", "room") == 1
	}, e.presenceWait(), 5*time.Millisecond, "no offline or left event")
	assert.Equal(t, 1, log.count(wshub.PresenceOnline, "alice", ""), "online events for one user on two nodes")
	assert.Equal(t, 1, log.count(wshub.PresenceJoined, "alice", "room"), "joined events for one user on two nodes")
	assert.Equal(t, 1, log.count(wshub.PresenceOffline, "alice", ""), "offline events")
	assert.Equal(t, 1, log.count(wshub.PresenceLeft, "alice", "room"), "left events")
}

func testPresenceMessageToTheTopic(t *testing.T, e *env) {
	c := e.cluster(2, func(_ int, o *wshub.Options) {
		o.OnConnect = func(ctx context.Context, s *wshub.Session) error { return s.Join(ctx, "room") }
		o.PresenceMessage = func(ev wshub.PresenceEvent) (wshub.Message, bool) {
			// A session joining the topic may miss the message of its
			// own join, which can be sent before its subscription is
			// confirmed: the watcher's events send nothing.
			return wshub.Text(ev.Kind.String() + " " + ev.UserID), ev.UserID != "quiet" && ev.UserID != "watcher"
		}
	})
	watcher := c.Dial(t, 0, "watcher")
	c.Dial(t, 1, "quiet") // its events send nothing
	bob := c.Dial(t, 1, "bob")
	assert.Equal(t, "joined bob", watcher.NextText())
	bob.Close()
	assert.Equal(t, "left bob", watcher.NextText())
}

// dialStatus dials node i as user and returns the HTTP status of the
// answer: 101 for an accepted upgrade, whose connection is closed with the
// test.
func dialStatus(t *testing.T, c *Cluster, i int, user string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(bg, Timeout)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, c.URL(i)+"?"+url.Values{UserParam: {user}}.Encode(), nil)
	if err == nil {
		t.Cleanup(func() { _ = conn.CloseNow() })
		go func() { // read, so that pings are answered
			for {
				if _, _, err := conn.Read(bg); err != nil {
					return
				}
			}
		}()
	}
	if resp == nil {
		t.Fatalf("dial node%d: %v", i, err)
	}
	return resp.StatusCode
}

func testClusterSessionsPerUser(t *testing.T, e *env) {
	c := e.cluster(2, func(_ int, o *wshub.Options) {
		o.Limits.ClusterSessionsPerUser = 2
	})
	require.Equal(t, http.StatusSwitchingProtocols, dialStatus(t, c.Cluster, 0, "alice"))
	require.Equal(t, http.StatusSwitchingProtocols, dialStatus(t, c.Cluster, 1, "alice"))
	assert.Equal(t, http.StatusTooManyRequests, dialStatus(t, c.Cluster, 0, "alice"), "a third session on a node with one")
	assert.Equal(t, http.StatusTooManyRequests, dialStatus(t, c.Cluster, 1, "alice"), "a third session on the other node")
	assert.Equal(t, uint64(2), c.Hub(0).Stats().Refused+c.Hub(1).Stats().Refused)

	// A race for the last places: 8 upgrades at once on both nodes, 2
	// places. Exactly 2 get in.
	var wg sync.WaitGroup
	codes := make(chan int, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(bg, Timeout)
			defer cancel()
			conn, resp, err := websocket.Dial(ctx, c.URL(i%2)+"?"+url.Values{UserParam: {"bob"}}.Encode(), nil)
			if err == nil {
				t.Cleanup(func() { _ = conn.CloseNow() })
				go func() {
					for {
						if _, _, err := conn.Read(bg); err != nil {
							return
						}
					}
				}()
			}
			if resp != nil {
				codes <- resp.StatusCode
			} else {
				codes <- 0
			}
		}()
	}
	wg.Wait()
	close(codes)
	got := map[int]int{}
	for code := range codes {
		got[code]++
	}
	assert.Equal(t, map[int]int{http.StatusSwitchingProtocols: 2, http.StatusTooManyRequests: 6}, got)
	e.online(t, c.Cluster, 0, "bob", 2)
}

func testJoinAcknowledged(t *testing.T, e *env) {
	c := e.cluster(3, nil)
	a0 := c.Dial(t, 0, "alice")
	a1 := c.Dial(t, 1, "alice")
	e.online(t, c.Cluster, 2, "alice", 2)

	// Once an acknowledged Join returns, a broadcast reaches every session
	// the user had: no wait, no retry.
	ctx, cancel := context.WithTimeout(bg, Timeout)
	defer cancel()
	require.NoError(t, c.Hub(2).Join(ctx, "alice", "news", wshub.Acknowledged()))
	require.NoError(t, c.Hub(2).Broadcast(bg, "news", wshub.Text("first")))
	assert.Equal(t, "first", a0.NextText())
	assert.Equal(t, "first", a1.NextText())

	require.NoError(t, c.Hub(2).Leave(ctx, "alice", "news", wshub.Acknowledged()))
	require.NoError(t, c.Hub(2).Broadcast(bg, "news", wshub.Text("unheard")))
	sendAndRead(t, c.Cluster, 2, "alice", "after leave", a0, a1)

	// A user with no session: nothing to wait for.
	require.NoError(t, c.Hub(2).Join(ctx, "nobody", "news", wshub.Acknowledged()))

	faults, ok := e.h.(Faults)
	if !ok {
		return
	}
	// A node that cannot answer is named.
	require.NoError(t, faults.Cut("node1"))
	short, cancel2 := context.WithTimeout(bg, 500*time.Millisecond)
	defer cancel2()
	err := c.Hub(2).Join(short, "alice", "news", wshub.Acknowledged())
	require.ErrorIs(t, err, wshub.ErrNotAcknowledged)
	var ae *wshub.AckError
	require.True(t, errors.As(err, &ae), "%v is not an *AckError", err)
	assert.Equal(t, []string{"node1"}, ae.Nodes)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	require.NoError(t, faults.Heal("node1"))
}

func testPresenceOfACutNodeExpires(t *testing.T, e *env) {
	faults, ok := e.h.(Faults)
	if !ok {
		t.Skip("wshubtest: the harness does not implement Faults")
	}
	var log presenceLog
	c := e.cluster(2, func(_ int, o *wshub.Options) { o.OnPresence = log.hook })
	c.Dial(t, 0, "alice")
	c.Dial(t, 1, "bob")
	e.online(t, c.Cluster, 0, "bob", 1)

	// Cut off, node1 can no longer keep its entries alive: the others see
	// bob go offline within the bound, and are told so.
	require.NoError(t, faults.Cut("node1"))
	e.online(t, c.Cluster, 0, "bob", 0)
	e.online(t, c.Cluster, 0, "alice", 1)
	require.Eventually(t, func() bool { return log.count(wshub.PresenceOffline, "bob", "") == 1 },
		e.presenceWait(), 5*time.Millisecond, "no offline event for the cut node's user")

	// Healed, it writes what it holds again.
	require.NoError(t, faults.Heal("node1"))
	e.online(t, c.Cluster, 0, "bob", 1)
}
