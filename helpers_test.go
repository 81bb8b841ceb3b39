package wshub

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/backplane/memory"
)

func TestMain(m *testing.M) {
	if addr := os.Getenv(childRedisEnv); addr != "" {
		runPresenceChild(addr, os.Getenv(childPrefixEnv)) // see TestPresenceOfAKilledNodeExpires
	}
	// go-redis's pool finishes a dial it started, with its own retries,
	// in a goroutine that can outlive Client.Close for a moment when the
	// server is gone (the fault tests kill it). It ends by itself.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).queuedNewConn.func2"))
}

// waitFor bounds every wait in these tests. It is a failure guard, not a
// timing assertion: a healthy run takes milliseconds.
const waitFor = 10 * time.Second

// node is one hub of a test cluster, served by its own httptest.Server.
type node struct {
	hub *Hub
	srv *httptest.Server
	bp  backplane.Backplane
	// received counts the messages the backplane handed to this node.
	received func() uint64
}

// cluster is several hubs on one backplane, each behind a real HTTP server.
type cluster struct {
	t     *testing.T
	bus   *memory.Bus // set on the memory backend
	nodes []*node
}

// userFromQuery authenticates by the "user" query parameter; "deny" fails.
func userFromQuery(r *http.Request) (string, error) {
	u := r.URL.Query().Get("user")
	if u == "deny" {
		return "", errors.New("denied")
	}
	return u, nil
}

// clusterMaker starts n hubs on one bus. tweak may adjust each node's
// options.
type clusterMaker func(t *testing.T, n int, tweak func(i int, o *Options)) *cluster

// newCluster starts n hubs on one memory bus.
func newCluster(t *testing.T, n int, tweak func(i int, o *Options)) *cluster {
	t.Helper()
	return newClusterOnBus(t, memory.NewBus(), n, tweak)
}

// newClusterOnBus starts n hubs on bus.
func newClusterOnBus(t *testing.T, bus *memory.Bus, n int, tweak func(i int, o *Options)) *cluster {
	t.Helper()
	c := newClusterOn(t, n, tweak, func(t *testing.T, name string) (backplane.Backplane, func() uint64) {
		bp, err := bus.NewNode(name)
		require.NoError(t, err)
		return bp, func() uint64 {
			st, err := bus.Stats(name)
			require.NoError(t, err)
			return st.Delivered
		}
	})
	c.bus = bus
	return c
}

// newClusterOn starts n hubs on the backplanes that makeBP makes.
func newClusterOn(t *testing.T, n int, tweak func(i int, o *Options),
	makeBP func(t *testing.T, name string) (backplane.Backplane, func() uint64)) *cluster {
	t.Helper()
	c := &cluster{t: t}
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("node%d", i)
		bp, received := makeBP(t, name)
		o := &Options{Backplane: bp, NodeID: name, Authenticate: userFromQuery, Logger: quiet}
		if tweak != nil {
			tweak(i, o)
		}
		h, err := New(o)
		require.NoError(t, err)
		srv := httptest.NewServer(h)
		nd := &node{hub: h, srv: srv, bp: bp, received: received}
		c.nodes = append(c.nodes, nd)
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			require.NoError(t, h.Close(ctx))
			srv.Close()
			require.NoError(t, bp.Close())
		})
	}
	return c
}

// client is a real WebSocket client whose messages are read in the
// background into a channel.
type client struct {
	t    *testing.T
	conn *websocket.Conn
	msgs chan Message
	done chan struct{}
	err  error // why reading stopped, valid after done
}

func dial(t *testing.T, n *node, user string) *client {
	t.Helper()
	c := dialNoRead(t, n, user)
	c.startReading()
	return c
}

func dialNoRead(t *testing.T, n *node, user string) *client {
	t.Helper()
	return dialURLNoRead(t, wsURL(n.srv)+"/ws?user="+user)
}

// dialURL dials the WebSocket URL u and reads in the background.
func dialURL(t *testing.T, u string) *client {
	t.Helper()
	c := dialURLNoRead(t, u)
	c.startReading()
	return c
}

func dialURLNoRead(t *testing.T, u string) *client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, u, nil)
	require.NoError(t, err)
	conn.SetReadLimit(-1)
	c := &client{t: t, conn: conn, msgs: make(chan Message, 100000), done: make(chan struct{})}
	t.Cleanup(func() { _ = conn.CloseNow() })
	return c
}

func (c *client) startReading() {
	go func() {
		defer close(c.done)
		for {
			typ, data, err := c.conn.Read(context.Background())
			if err != nil {
				c.err = err
				return
			}
			c.msgs <- Message{Type: MessageType(typ), Data: data}
		}
	}()
	c.t.Cleanup(func() { _ = c.conn.CloseNow(); <-c.done })
}

// next returns the next message, failing the test if none comes.
func (c *client) next() Message {
	c.t.Helper()
	select {
	case m := <-c.msgs:
		return m
	case <-c.done:
		select {
		case m := <-c.msgs:
			return m
		default:
		}
		c.t.Fatalf("connection ended while waiting for a message: %v", c.err)
	case <-time.After(waitFor):
		c.t.Fatal("no message arrived")
	}
	return Message{}
}

// nextText returns the next message's data, which must be text.
func (c *client) nextText() string {
	c.t.Helper()
	m := c.next()
	require.Equal(c.t, MessageText, m.Type)
	return string(m.Data)
}

// closed waits for the connection to end and returns its close status.
func (c *client) closed() StatusCode {
	c.t.Helper()
	select {
	case <-c.done:
		return CloseStatus(c.err)
	case <-time.After(waitFor):
		c.t.Fatal("connection did not close")
	}
	return -1
}

// sessions returns the hub's local sessions of user.
func (n *node) sessions(user string) []*Session {
	return n.hub.reg.userSessions(user)
}

// subscribed reports whether the backplane confirmed this node's interest in
// channel, without changing anything.
func (n *node) subscribed(channel string) bool {
	im := n.hub.interest
	im.mu.Lock()
	defer im.mu.Unlock()
	st := im.chans[channel]
	return st != nil && st.subscribed && !st.dirty && !st.inflight
}

// waitJoined waits until every node that holds a session of user has it in
// topic and has confirmed its subscription to the topic.
func (c *cluster) waitJoined(user, topic string, want bool) {
	c.t.Helper()
	require.Eventually(c.t, func() bool {
		for _, n := range c.nodes {
			for _, s := range n.sessions(user) {
				in := false
				for _, tp := range s.Topics() {
					in = in || tp == topic
				}
				if in != want || (want && !n.subscribed(topicPrefix+topic)) {
					return false
				}
			}
		}
		return true
	}, waitFor, time.Millisecond)
}

var bg = context.Background()

// quiet drops the hub's logs, which tests provoke on purpose.
var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// get returns user's i-th session once OnConnect has recorded it.
func (l *sessionLog) get(t *testing.T, user string, i int) *Session {
	t.Helper()
	var s *Session
	require.Eventually(t, func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		if len(l.m[user]) > i {
			s = l.m[user][i]
		}
		return s != nil
	}, waitFor, time.Millisecond)
	return s
}

// onConnectRecorder returns an OnConnect hook that stores sessions by user.
type sessionLog struct {
	mu sync.Mutex
	m  map[string][]*Session
}

func (l *sessionLog) hook(_ context.Context, s *Session) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = make(map[string][]*Session)
	}
	l.m[s.UserID()] = append(l.m[s.UserID()], s)
	return nil
}

func newServer(t *testing.T, h *Hub) *httptest.Server {
	t.Helper()
	return httptest.NewServer(h)
}

// wsURL is the WebSocket URL of srv.
func wsURL(srv *httptest.Server) string {
	return "ws" + strings.TrimPrefix(srv.URL, "http")
}

// newLogCluster starts n hubs on one memory bus that keeps a log of every
// channel, of up to messages messages (and no age bound), so that clients
// can resume. tweak may adjust each node's options.
func newLogCluster(t *testing.T, n, messages int, tweak func(i int, o *Options)) *cluster {
	t.Helper()
	bus := memory.NewBus()
	require.NoError(t, bus.SetLogLimit(messages, 0))
	return newClusterOnBus(t, bus, n, tweak)
}

// logNodes is newLogCluster for the resume tests, the memory counterpart
// of streamsNodes: every session joins topic "room" in OnConnect.
func logNodes(t *testing.T, n, messages int) *cluster {
	t.Helper()
	return newLogCluster(t, n, messages, func(i int, o *Options) {
		o.SendQueueLen = 4096
		o.OnConnect = func(ctx context.Context, s *Session) error { return s.Join(ctx, "room") }
	})
}
