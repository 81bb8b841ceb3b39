// Package wshubtest runs clusters of wshub hubs inside a test.
//
// Application tests start a cluster of hubs on one in-process memory bus,
// dial test clients as given users and read what they got:
//
//	func TestGreeting(t *testing.T) {
//		c := wshubtest.NewCluster(t, 2, &wshub.Options{OnConnect: greet})
//		alice := c.Dial(t, 1, "alice")
//		if got := alice.NextText(); got != "welcome" {
//			t.Fatalf("got %q", got)
//		}
//	}
//
// Every hub, server, backplane and client is closed in the test's cleanup,
// and every wait is bounded by Timeout: a test fails, it never hangs.
//
// Backend authors run the hub-level cluster suite, RunHub, on their
// backplane, next to the backplane-level suite of package
// github.com/wshub/wshub/backplane/backplanetest: a test of the backend's
// package implements Harness (and Faults, when it can cut a node off its
// bus) and calls RunHub with the Features the backend promises.
package wshubtest

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wshub/wshub"
	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/backplane/memory"
)

// Timeout bounds every wait of this package: for a message, a close, a
// dial, a hub's Close. It is a guard against a hung test, not a timing a
// test relies on; a healthy cluster answers in milliseconds.
const Timeout = 10 * time.Second

// UserParam is the query parameter that names the user of a test
// connection. Unless Options.Authenticate is set, a cluster's hubs
// authenticate every upgrade as the user it names, and an upgrade without
// it as an anonymous session. Dial sets it.
const UserParam = "user"

// Cluster is a cluster of hubs in one test, each served by its own
// httptest.Server. Nodes are numbered from 0; node i's hub has NodeID
// "node<i>". Its methods must be called from the test's goroutine.
type Cluster struct {
	t     testing.TB
	bus   *memory.Bus
	nodes []*node
}

// node is one hub of a cluster and what serves it.
type node struct {
	hub *wshub.Hub
	srv *httptest.Server
	bp  backplane.Backplane
}

// NewCluster starts n hubs configured by opts (nil for the defaults), each
// on its own node of one memory bus and behind its own httptest.Server.
// The test's cleanup closes the hubs, then the servers, then the bus nodes.
//
// Every hub gets a copy of opts, with NodeID set to "node<i>" and Backplane
// to its node of the bus (whatever opts holds for them). A nil
// Authenticate takes the user ID from the UserParam query parameter, and a
// nil Logger logs warnings and errors to the test's log. NewCluster fails
// the test when a hub does not start.
func NewCluster(t testing.TB, n int, opts *wshub.Options) *Cluster {
	t.Helper()
	bus := memory.NewBus()
	c := start(t, n, opts, nil, func(name string) (backplane.Backplane, error) {
		return bus.NewNode(name)
	})
	c.bus = bus
	return c
}

// start starts n hubs on the backplanes that newBP makes. tweak, when not
// nil, changes node i's options last.
func start(t testing.TB, n int, opts *wshub.Options, tweak func(i int, o *wshub.Options),
	newBP func(name string) (backplane.Backplane, error)) *Cluster {
	t.Helper()
	if n < 1 {
		t.Fatalf("wshubtest: a cluster of %d nodes", n)
	}
	c := &Cluster{t: t}
	logs := &testLog{t: t}
	t.Cleanup(logs.stop) // runs last: after every hub has closed
	for i := range n {
		name := fmt.Sprintf("node%d", i)
		bp, err := newBP(name)
		if err != nil {
			t.Fatalf("wshubtest: backplane of %s: %v", name, err)
		}
		var o wshub.Options
		if opts != nil {
			o = *opts
		}
		o.NodeID, o.Backplane = name, bp
		if o.Authenticate == nil {
			o.Authenticate = userFromQuery
		}
		if o.Logger == nil {
			o.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
		}
		if tweak != nil {
			tweak(i, &o)
		}
		h, err := wshub.New(&o)
		if err != nil {
			_ = bp.Close()
			t.Fatalf("wshubtest: start %s: %v", name, err)
		}
		nd := &node{hub: h, srv: httptest.NewServer(h), bp: bp}
		c.nodes = append(c.nodes, nd)
		t.Cleanup(func() { nd.close(t) })
	}
	return c
}

// close closes the hub, then its server, then its backplane.
func (n *node) close(t testing.TB) {
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	if err := n.hub.Close(ctx); err != nil {
		t.Errorf("wshubtest: close %s: %v", n.hub.NodeID(), err)
	}
	n.srv.Close()
	if err := n.bp.Close(); err != nil {
		t.Errorf("wshubtest: close the backplane of %s: %v", n.hub.NodeID(), err)
	}
}

// Hub returns node i's hub.
func (c *Cluster) Hub(i int) *wshub.Hub { return c.node(i).hub }

// URL returns the WebSocket URL of node i's server, "ws://127.0.0.1:port",
// for a client of the test's own.
func (c *Cluster) URL(i int) string {
	return "ws" + strings.TrimPrefix(c.node(i).srv.URL, "http")
}

// Bus returns the memory bus of a cluster made by NewCluster, to inject
// faults: c.Bus().Partition(c.Hub(1).NodeID()) cuts node 1 off. It returns
// nil for a cluster of RunHub, whose faults come from its Harness.
func (c *Cluster) Bus() *memory.Bus { return c.bus }

func (c *Cluster) node(i int) *node {
	c.t.Helper()
	if i < 0 || i >= len(c.nodes) {
		c.t.Fatalf("wshubtest: no node %d in a cluster of %d", i, len(c.nodes))
	}
	return c.nodes[i]
}

// Dial connects a test client to node i as user, "" for an anonymous
// session, and starts reading what the hub sends it. It fails t when the
// upgrade is refused. t's cleanup closes the connection.
func (c *Cluster) Dial(t testing.TB, i int, user string) *Client {
	t.Helper()
	return c.DialQuery(t, i, user, nil)
}

// DialQuery is Dial with more query parameters on the upgrade request,
// such as wshub.PositionsParam or wshub.SinceParam for a client that
// resumes.
func (c *Cluster) DialQuery(t testing.TB, i int, user string, query url.Values) *Client {
	t.Helper()
	cl := c.dial(t, i, user, query)
	cl.startReading()
	return cl
}

// dial connects a client that does not read until startReading.
func (c *Cluster) dial(t testing.TB, i int, user string, query url.Values) *Client {
	t.Helper()
	q := url.Values{}
	for k, v := range query {
		q[k] = append([]string(nil), v...)
	}
	if user != "" {
		q.Set(UserParam, user)
	}
	u := c.URL(i) + "/"
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return dial(t, u)
}

// userFromQuery is the cluster's default Authenticate.
func userFromQuery(r *http.Request) (string, error) {
	return r.URL.Query().Get(UserParam), nil
}

// testLog writes the hubs' logs to the test's log until stop, so that a
// late line cannot reach a test that has ended.
type testLog struct {
	t       testing.TB
	mu      sync.Mutex
	stopped bool
}

func (l *testLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.stopped {
		l.t.Logf("%s", strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

func (l *testLog) stop() {
	l.mu.Lock()
	l.stopped = true
	l.mu.Unlock()
}
