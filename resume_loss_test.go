package wshub

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/backplane"
	wsredis "github.com/wshub/wshub/backplane/redis"
	"github.com/wshub/wshub/internal/redistest"
)

// What a resuming client is told when the log it resumes in was lost, or
// when what it sends back cannot be trusted.

// awayAndBack connects alice to node a, lets her see one message, and
// disconnects her; then five messages are sent to her while she is away,
// lose runs, and she comes back on node b with her head. It returns what
// she gets first on each channel she resumes, after the recovered
// messages, with those messages.
func awayAndBack(t *testing.T, srv *redistest.Server, age time.Duration, lose func(head string)) (status string, got []string) {
	t.Helper()
	c := streamsNodes(t, srv, 2, wsredis.StreamsOptions{})
	a, b := c.nodes[0], c.nodes[1]
	first, head := seenOnce(t, c)
	require.NoError(t, first.conn.Close(websocket.StatusNormalClosure, ""))
	require.Eventually(t, func() bool { return len(a.sessions("alice")) == 0 }, waitFor, time.Millisecond)
	time.Sleep(age) // how old her position is when the log is lost
	for i := 0; i < 5; i++ {
		require.NoError(t, b.hub.Send(bg, "alice", Text(strconv.Itoa(i))))
	}
	lose(head)
	// Both nodes must deliver again before she comes back.
	for _, n := range c.nodes {
		require.Eventually(t, func() bool { return n.hub.Health() == nil }, waitFor, 10*time.Millisecond)
	}
	var again *client
	require.Eventually(t, func() bool {
		q := url.Values{"user": {"alice"}, PositionsParam: {"1"}, SinceParam: {head}}
		conn, _, err := websocket.Dial(bg, wsURL(b.srv)+"/ws?"+q.Encode(), nil)
		if err != nil {
			return false
		}
		conn.SetReadLimit(-1)
		again = &client{t: t, conn: conn, msgs: make(chan Message, 1000), done: make(chan struct{})}
		again.startReading()
		return true
	}, waitFor, 50*time.Millisecond)
	for {
		h, p := again.nextFramed()
		if strings.HasPrefix(h, "!") {
			return h, got
		}
		got = append(got, p)
	}
}

// seenOnce connects alice to c's first node with the positions framing and
// has the second node send her one message, "seen"; it returns her client
// and the head of that message.
func seenOnce(t *testing.T, c *cluster) (*client, string) {
	t.Helper()
	first := dialResume(t, c.nodes[0], "alice")
	require.NoError(t, c.nodes[1].hub.Send(bg, "alice", Text("seen")))
	head, p := first.nextFramed()
	require.Equal(t, "seen", p)
	return first, head
}

func TestResumeAfterTheLogWasLostIsNotRecovered(t *testing.T) {
	restart := func(t *testing.T, srv *redistest.Server) {
		srv.Kill(t)
		srv.Restart(t)
	}
	cases := []struct {
		name string
		opts []redistest.Option
		lose func(t *testing.T, srv *redistest.Server, head string)
	}{
		{"restart without persistence", nil, func(t *testing.T, srv *redistest.Server, _ string) { restart(t, srv) }},
		{"failover to a fresh server", []redistest.Option{redistest.WithAppendOnly()}, func(t *testing.T, srv *redistest.Server, _ string) {
			srv.Kill(t)
			require.NoError(t, os.RemoveAll(filepath.Join(srv.Dir(), "appendonlydir")))
			srv.Restart(t)
		}},
		{"log key deleted", nil, func(t *testing.T, srv *redistest.Server, _ string) {
			rc := srv.Client(t)
			keys, err := rc.Keys(bg, "*log:u:alice").Result()
			require.NoError(t, err)
			require.Len(t, keys, 1)
			require.NoError(t, rc.Del(bg, keys[0]).Err())
		}},
	}
	for _, tc := range cases {
		for _, age := range []time.Duration{0, 3 * time.Second} {
			t.Run(fmt.Sprintf("%s/position %v old", tc.name, age), func(t *testing.T) {
				srv := redistest.Start(t, tc.opts...)
				status, got := awayAndBack(t, srv, age, func(head string) { tc.lose(t, srv, head) })
				assert.Equal(t, "!not-recovered u:alice", status, "after %q", got)
				assert.Empty(t, got, "nothing is passed off as what she missed")
			})
		}
	}
}

// With appendonly a restart loses nothing, and the client is told so.
func TestResumeAfterARestartWithPersistenceRecoversAll(t *testing.T) {
	srv := redistest.Start(t, redistest.WithAppendOnly(), redistest.WithArgs("--appendfsync", "always"))
	status, got := awayAndBack(t, srv, 2*time.Second, func(string) {
		srv.Kill(t)
		srv.Restart(t)
	})
	assert.Equal(t, "!recovered u:alice", status)
	assert.Equal(t, []string{"0", "1", "2", "3", "4"}, got)
}

// A head from the future (an offset beyond the log's end, in the log's own
// epoch) is not recovered, and does not silence what comes next.
func TestResumeFromTheFutureIsNotRecoveredAndSilencesNothing(t *testing.T) {
	c := logNodes(t, 2, 1000)
	a, b := c.nodes[0], c.nodes[1]
	_, head := seenOnce(t, c)
	off, ch, _ := strings.Cut(head, " ")
	epoch, _ := backplane.SplitOffset(off)
	// A position in the memory backplane's form, far after the log's end.
	future := fmt.Sprintf("%s:%016x %s", epoch, uint64(1)<<40, ch)

	again := dialResume(t, b, "alice", future)
	h, _ := again.nextFramed()
	require.Equal(t, "!not-recovered u:alice", h)
	for i := 0; i < 3; i++ {
		require.NoError(t, a.hub.Send(bg, "alice", Text(strconv.Itoa(i))))
		_, p := again.nextFramed()
		require.Equal(t, strconv.Itoa(i), p, "real messages after a forged head still arrive")
	}
}

// On the memory backplane, a log dropped by the bus's fault method is lost
// as a Redis log is: the client is told "!not-recovered", and what comes
// next, in the log's new epoch, still arrives.
func TestResumeAfterTheMemoryLogWasDroppedIsNotRecovered(t *testing.T) {
	c := logNodes(t, 2, 1000)
	a, b := c.nodes[0], c.nodes[1]
	first, head := seenOnce(t, c)
	require.NoError(t, first.conn.Close(websocket.StatusNormalClosure, ""))
	require.Eventually(t, func() bool { return len(a.sessions("alice")) == 0 }, waitFor, time.Millisecond)
	for i := 0; i < 5; i++ {
		require.NoError(t, b.hub.Send(bg, "alice", Text(strconv.Itoa(i))))
	}
	require.NoError(t, c.bus.DropLog("u:alice"))

	again := dialResume(t, b, "alice", head)
	h, p := again.nextFramed()
	require.Equal(t, "!not-recovered u:alice", h, "nothing is passed off as what she missed: %q", p)
	require.NoError(t, a.hub.Send(bg, "alice", Text("live")))
	h, p = again.nextFramed()
	assert.Equal(t, "live", p)
	assert.True(t, backplane.OffsetAfter(strings.Fields(h)[0], strings.Fields(head)[0]), "%q after %q", h, head)
}

// A client that resumes skips the broadcasts its earlier connection was
// left out of (its own chat messages, relayed with Except); another tab of
// the same user still gets them.
func TestResumeSkipsWhatTheSameClientWasLeftOutOf(t *testing.T) {
	c := newLogCluster(t, 2, 1000, func(i int, o *Options) {
		o.OnConnect = func(ctx context.Context, s *Session) error { return s.Join(ctx, "room") }
		o.OnMessage = func(ctx context.Context, s *Session, m Message) {
			_ = s.Hub().Broadcast(ctx, "room", m, Except(s.ID()))
		}
	})
	a, b := c.nodes[0], c.nodes[1]
	dialAs := func(n *node, key string, since ...string) *client {
		q := url.Values{"user": {"alice"}, PositionsParam: {"1"}, ClientParam: {key}}
		for _, h := range since {
			q.Add(SinceParam, h)
		}
		conn, _, err := websocket.Dial(bg, wsURL(n.srv)+"/ws?"+q.Encode(), nil)
		require.NoError(t, err)
		cl := &client{t: t, conn: conn, msgs: make(chan Message, 1000), done: make(chan struct{})}
		cl.startReading()
		return cl
	}
	tab1 := dialAs(a, "tab-1")
	tab2 := dialAs(b, "tab-2")
	c.waitJoined("alice", "room", true)
	require.NoError(t, a.hub.Broadcast(bg, "room", Text("hello")))
	head, _ := tab1.nextFramed()
	tab2.nextFramed()

	for _, m := range []string{"x1", "x2"} {
		require.NoError(t, tab1.conn.Write(bg, websocket.MessageText, []byte(m)))
		_, p := tab2.nextFramed()
		require.Equal(t, m, p, "the other tab gets it live")
	}
	require.NoError(t, tab1.conn.Close(websocket.StatusNormalClosure, ""))
	require.Eventually(t, func() bool { return len(a.sessions("alice")) == 0 }, waitFor, time.Millisecond)
	require.NoError(t, a.hub.Broadcast(bg, "room", Text("missed")))

	back := dialAs(b, "tab-1", head)
	_, p := back.nextFramed()
	assert.Equal(t, "missed", p, "x1 and x2, which tab-1 sent, are not given back to it")
	h, _ := back.nextFramed()
	assert.Equal(t, "!recovered t:room", h)

	// A resume under another client key gets them.
	other := dialAs(a, "tab-3", head)
	var rest []string
	for {
		h, p := other.nextFramed()
		if strings.HasPrefix(h, "!") {
			break
		}
		rest = append(rest, p)
	}
	assert.Equal(t, []string{"x1", "x2", "missed"}, rest)
}

// Resume parameters the hub cannot use are refused before the upgrade,
// with nothing echoed back.
func TestResumeParametersOverTheLimitsAreRefused(t *testing.T) {
	c := newLogCluster(t, 1, 1000, nil)
	long := strings.Repeat("x", MaxNameLength+1)
	for name, q := range map[string]url.Values{
		"channel name too long": {SinceParam: {"0000:00-00 u:" + long}},
		"100 KB channel":        {SinceParam: {"0000:00-00 t:" + strings.Repeat("y", 100<<10)}},
		"not a user or topic":   {SinceParam: {"0000:00-00 n:node0"}},
		"offset too long":       {SinceParam: {strings.Repeat("0", 200) + " u:alice"}},
		"no offset":             {SinceParam: {"u:alice"}},
		"too many":              {SinceParam: manySince(maxSince + 1)},
		"bad client key":        {ClientParam: {"has space"}},
		"long client key":       {ClientParam: {strings.Repeat("k", 65)}},
	} {
		t.Run(name, func(t *testing.T) {
			q.Set("user", "alice")
			conn, resp, err := websocket.Dial(bg, wsURL(c.nodes[0].srv)+"/ws?"+q.Encode(), nil)
			if conn != nil {
				_ = conn.CloseNow()
			}
			require.Error(t, err)
			require.NotNil(t, resp)
			assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
		})
	}
	// At the limits, it is accepted.
	q := url.Values{"user": {"alice"}, SinceParam: manySince(maxSince), ClientParam: {strings.Repeat("k", 64)}}
	q.Add(SinceParam, "0000:00-00 t:"+strings.Repeat("z", MaxNameLength))
	q[SinceParam] = q[SinceParam][1:]
	conn, _, err := websocket.Dial(bg, wsURL(c.nodes[0].srv)+"/ws?"+q.Encode(), nil)
	require.NoError(t, err)
	_ = conn.CloseNow()
}

func manySince(n int) []string {
	l := make([]string, n)
	for i := range l {
		l[i] = fmt.Sprintf("0000:00-00 t:room%d", i)
	}
	return l
}
