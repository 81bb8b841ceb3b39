package wshub

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// tryDial dials n as user and returns the client when the upgrade was
// accepted, or the refusal's response (its body already read) when not.
func tryDial(t *testing.T, n *node, user string) (*client, *http.Response) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, wsURL(n.srv)+"/ws?user="+user, nil)
	if err != nil {
		require.NotNil(t, resp, "dial failed without a response: %v", err)
		return nil, resp
	}
	c := &client{t: t, conn: conn, msgs: make(chan Message, 16), done: make(chan struct{})}
	t.Cleanup(func() { _ = conn.CloseNow() })
	c.startReading()
	return c, nil
}

// requireRefused dials n as user and requires the upgrade to be refused with
// status, a Retry-After of retryAfter and a body naming the limit.
func requireRefused(t *testing.T, n *node, user string, status int, retryAfter, limit string) {
	t.Helper()
	c, resp := tryDial(t, n, user)
	require.Nil(t, c, "upgrade of %q accepted", user)
	assert.Equal(t, status, resp.StatusCode)
	assert.Equal(t, retryAfter, resp.Header.Get("Retry-After"))
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.Contains(t, string(body), limit)
}

// closeAndWait closes c and waits until n has let go of its session, so that
// its place under a limit is free.
func closeAndWait(t *testing.T, n *node, c *client, user string, left int) {
	t.Helper()
	require.NoError(t, c.conn.Close(websocket.StatusNormalClosure, ""))
	require.Eventually(t, func() bool { return len(n.sessions(user)) == left }, waitFor, time.Millisecond)
}

// hasInterest reports whether n's interest manager knows channel at all,
// subscribed or not.
func (n *node) hasInterest(channel string) bool {
	im := n.hub.interest
	im.mu.Lock()
	defer im.mu.Unlock()
	return im.chans[channel] != nil
}

// One user gets Limits.SessionsPerUser sessions on a node; the next upgrade
// is refused with 429 and Retry-After, before any WebSocket or hook, while
// other users are unaffected, and a freed place can be taken again.
func TestLimitSessionsPerUser(t *testing.T) {
	var log sessionLog
	c := newCluster(t, 1, func(_ int, o *Options) {
		o.Limits.SessionsPerUser = 3
		o.Limits.RetryAfter = 1500 * time.Millisecond // rounds up to 2
		o.OnConnect = log.hook
	})
	n := c.nodes[0]
	var alice []*client
	for range 3 {
		alice = append(alice, dial(t, n, "alice"))
	}
	requireRefused(t, n, "alice", http.StatusTooManyRequests, "2", "Limits.SessionsPerUser")
	dial(t, n, "bob") // another user is unaffected

	// Accepted counts once the handshake is written, which may be just
	// after the client has read it.
	require.Eventually(t, func() bool { return n.hub.Stats().Accepted == 4 }, waitFor, time.Millisecond)
	st := n.hub.Stats()
	assert.EqualValues(t, 1, st.Refused)
	assert.Equal(t, 4, st.Sessions)
	log.mu.Lock()
	assert.Len(t, log.m["alice"], 3, "OnConnect never saw the refused upgrade")
	log.mu.Unlock()

	closeAndWait(t, n, alice[0], "alice", 2)
	dial(t, n, "alice")
	requireRefused(t, n, "alice", http.StatusTooManyRequests, "2", "Limits.SessionsPerUser")
	assert.EqualValues(t, 2, n.hub.Stats().Refused)
}

// The node takes Limits.Sessions sessions in all, anonymous ones included;
// the next upgrade is refused with 503 and Retry-After and leaves no
// interest behind.
func TestLimitSessionsPerNode(t *testing.T) {
	c := newCluster(t, 1, func(_ int, o *Options) { o.Limits.Sessions = 2 })
	n := c.nodes[0]
	first := dial(t, n, "alice")
	dial(t, n, "") // anonymous
	requireRefused(t, n, "carol", http.StatusServiceUnavailable, "5", "Limits.Sessions")
	requireRefused(t, n, "", http.StatusServiceUnavailable, "5", "Limits.Sessions")

	st := n.hub.Stats()
	assert.EqualValues(t, 2, st.Refused)
	assert.Equal(t, 2, st.Sessions)
	assert.False(t, n.hasInterest(userPrefix+"carol"), "a refused upgrade subscribed its user")

	closeAndWait(t, n, first, "alice", 0)
	require.Eventually(t, func() bool { return n.hub.Stats().Sessions == 1 }, waitFor, time.Millisecond)
	dial(t, n, "carol")
}

// Anonymous sessions have no user and so no per-user limit: they count
// against Limits.Sessions only.
func TestLimitAnonymousSessions(t *testing.T) {
	c := newCluster(t, 1, func(_ int, o *Options) {
		o.Limits.SessionsPerUser = 1
		o.Limits.Sessions = 3
	})
	n := c.nodes[0]
	for range 3 {
		dial(t, n, "")
	}
	requireRefused(t, n, "", http.StatusServiceUnavailable, "5", "Limits.Sessions")
	assert.EqualValues(t, 1, n.hub.Stats().Refused)
}

// Concurrent upgrades of one user never take it past its limit together:
// the check and the insert are one step.
func TestLimitConcurrentDials(t *testing.T) {
	const limit, dials = 10, 50
	c := newCluster(t, 1, func(_ int, o *Options) { o.Limits.SessionsPerUser = limit })
	n := c.nodes[0]

	var (
		wg              sync.WaitGroup
		mu              sync.Mutex
		accepted, other int
		refused         int
		start           = make(chan struct{})
	)
	for range dials {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			conn, resp, err := websocket.Dial(ctx, wsURL(n.srv)+"/ws?user=alice", nil)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				accepted++
				t.Cleanup(func() { _ = conn.CloseNow() })
			case resp != nil && resp.StatusCode == http.StatusTooManyRequests:
				refused++
			default:
				other++
			}
		}()
	}
	close(start)
	wg.Wait()
	assert.Equal(t, limit, accepted)
	assert.Equal(t, dials-limit, refused)
	assert.Zero(t, other)
	assert.Len(t, n.sessions("alice"), limit)
	assert.EqualValues(t, dials-limit, n.hub.Stats().Refused)
}

// A session is in at most Limits.TopicsPerSession topics: Session.Join past
// it (from OnConnect too) returns ErrLimit, rejoining is fine, and a
// cluster-wide Hub.Join skips the sessions at the limit and counts them.
func TestLimitTopicsPerSession(t *testing.T) {
	var (
		log       sessionLog
		mu        sync.Mutex
		onConnect error
	)
	c := newCluster(t, 2, func(_ int, o *Options) {
		o.Limits.TopicsPerSession = 2
		o.OnConnect = func(ctx context.Context, s *Session) error {
			if s.UserID() == "full" {
				assert.NoError(t, s.Join(ctx, "a"))
				assert.NoError(t, s.Join(ctx, "b"))
				mu.Lock()
				onConnect = s.Join(ctx, "c")
				mu.Unlock()
			}
			return log.hook(ctx, s)
		}
	})
	n0, n1 := c.nodes[0], c.nodes[1]

	dial(t, n0, "full")
	log.get(t, "full", 0)
	mu.Lock()
	assert.ErrorIs(t, onConnect, ErrLimit, "OnConnect's Join past the limit")
	mu.Unlock()

	dial(t, n0, "alice")
	dial(t, n1, "alice")
	s0, s1 := log.get(t, "alice", 0), log.get(t, "alice", 1)
	if s0.Hub() != n0.hub {
		s0, s1 = s1, s0
	}
	require.NoError(t, s0.Join(bg, "a"))
	require.NoError(t, s0.Join(bg, "b"))
	err := s0.Join(bg, "c")
	require.ErrorIs(t, err, ErrLimit)
	assert.Contains(t, err.Error(), "Limits.TopicsPerSession")
	require.NoError(t, s0.Join(bg, "a"), "a topic the session is in is not refused")
	assert.EqualValues(t, 2, n0.hub.Stats().TopicsRefused, "OnConnect's refusal and this one")

	// Node 1's session has room, node 0's is full.
	require.NoError(t, n1.hub.Join(bg, "alice", "x"))
	require.Eventually(t, func() bool { return s1.InTopic("x") }, waitFor, time.Millisecond)
	require.Eventually(t, func() bool { return n0.hub.Stats().TopicsRefused == 3 }, waitFor, time.Millisecond)
	assert.Equal(t, []string{"a", "b"}, s0.Topics())
	assert.Zero(t, n1.hub.Stats().TopicsRefused)
	assert.False(t, n0.hasInterest(topicPrefix+"x"), "a skipped session subscribed its topic")

	// Leaving makes room again.
	require.NoError(t, s0.Leave("b"))
	require.NoError(t, s0.Join(bg, "c"))
}

// Without any option a user gets 100 sessions per node; -1 turns the limit
// off.
func TestLimitDefaults(t *testing.T) {
	t.Run("default", func(t *testing.T) {
		n := newCluster(t, 1, nil).nodes[0]
		for range 100 {
			dialNoRead(t, n, "alice")
		}
		requireRefused(t, n, "alice", http.StatusTooManyRequests, "5", "Limits.SessionsPerUser")
	})
	t.Run("off", func(t *testing.T) {
		n := newCluster(t, 1, func(_ int, o *Options) { o.Limits.SessionsPerUser = -1 }).nodes[0]
		for range 101 {
			dialNoRead(t, n, "alice")
		}
		assert.Zero(t, n.hub.Stats().Refused)
	})
}

// fakeHijacker is a ResponseRecorder that claims it can hijack, for a
// refusal that never does.
type fakeHijacker struct{ *httptest.ResponseRecorder }

func (fakeHijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return nil, nil, http.ErrNotSupported
}

// BenchmarkRefusedUpgrade measures an upgrade refused because its user is at
// Limits.SessionsPerUser. "loopback" is the whole round trip, client and
// server in this process: a WebSocket dial over a kept-alive loopback HTTP
// connection, answered 429. "handler" is the hub's side alone: ServeHTTP
// with a recorded response, from authentication to the 429.
func BenchmarkRefusedUpgrade(b *testing.B) {
	h, err := New(&Options{Authenticate: userFromQuery, Logger: quiet, Limits: Limits{SessionsPerUser: 1}})
	require.NoError(b, err)
	srv := httptest.NewServer(h)
	tr := &http.Transport{}
	client := &http.Client{Transport: tr}
	defer func() {
		require.NoError(b, h.Close(bg))
		srv.Close()
		tr.CloseIdleConnections()
	}()
	conn, _, err := websocket.Dial(bg, wsURL(srv)+"/ws?user=alice", &websocket.DialOptions{HTTPClient: client})
	require.NoError(b, err)
	defer conn.CloseNow()

	b.Run("loopback", func(b *testing.B) {
		url := wsURL(srv) + "/ws?user=alice"
		opts := &websocket.DialOptions{HTTPClient: client}
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			_, resp, err := websocket.Dial(bg, url, opts)
			if err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
				b.Fatalf("not refused: %v", err)
			}
		}
	})
	b.Run("handler", func(b *testing.B) {
		r := httptest.NewRequest(http.MethodGet, "/ws?user=alice", nil)
		r.Header.Set("Connection", "Upgrade")
		r.Header.Set("Upgrade", "websocket")
		r.Header.Set("Sec-WebSocket-Version", "13")
		r.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			w := fakeHijacker{httptest.NewRecorder()}
			h.ServeHTTP(w, r)
			if w.Code != http.StatusTooManyRequests {
				b.Fatalf("status %d", w.Code)
			}
		}
	})
}
