package metrics_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/wshub/wshub"
	"github.com/wshub/wshub/backplane/memory"
	"github.com/wshub/wshub/metrics"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitFor bounds every wait: a failure guard, not a timing assertion.
const waitFor = 10 * time.Second

var bg = context.Background()

// testHub is a hub on a memory bus behind a real HTTP server, whose
// collector is registered on a pedantic registry (which checks that what
// is collected matches what is described).
type testHub struct {
	hub *wshub.Hub
	bus *memory.Bus
	srv *httptest.Server
	reg *prometheus.Registry
}

func newTestHub(t *testing.T, opts ...metrics.Option) *testHub {
	t.Helper()
	bus := memory.NewBus()
	bp, err := bus.NewNode("n1")
	require.NoError(t, err)
	h, err := wshub.New(&wshub.Options{
		Backplane:    bp,
		NodeID:       "n1",
		Authenticate: func(r *http.Request) (string, error) { return r.URL.Query().Get("user"), nil },
		OnConnect:    func(ctx context.Context, s *wshub.Session) error { return s.Join(ctx, "room") },
	})
	require.NoError(t, err)
	srv := httptest.NewServer(h)
	t.Cleanup(func() {
		require.NoError(t, h.Close(bg))
		srv.Close()
		require.NoError(t, bp.Close())
	})
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(metrics.NewCollector(h, opts...)))
	return &testHub{hub: h, bus: bus, srv: srv, reg: reg}
}

// dial opens a WebSocket to the hub as user.
func (th *testHub) dial(t *testing.T, user string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(bg, waitFor)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(th.srv.URL, "http")+"/?user="+user, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.CloseNow() })
	return conn
}

// compare checks the given metrics, in the text format, against what the
// registry gathers now.
func (th *testHub) compare(t *testing.T, want string, names ...string) {
	t.Helper()
	assert.NoError(t, testutil.GatherAndCompare(th.reg, strings.NewReader(want), names...))
}

// eventually waits until the registry gathers want for the given metrics.
func (th *testHub) eventually(t *testing.T, want string, names ...string) {
	t.Helper()
	var err error
	ok := assert.Eventually(t, func() bool {
		err = testutil.GatherAndCompare(th.reg, strings.NewReader(want), names...)
		return err == nil
	}, waitFor, time.Millisecond)
	if !ok {
		t.Log(err)
	}
}

// histogramCount returns the number of observations of the histogram name.
func (th *testHub) histogramCount(t *testing.T, name string) uint64 {
	t.Helper()
	mfs, err := th.reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			require.Equal(t, dto.MetricType_HISTOGRAM, mf.GetType())
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// Real clients connect, send, receive and leave; the metrics follow.
func TestCollectorFollowsTheHub(t *testing.T) {
	th := newTestHub(t)
	alice, bob := th.dial(t, "alice"), th.dial(t, "bob")
	// The hub counts an accepted session once its side of the handshake
	// returns, which the client may see complete a moment before.
	th.eventually(t, `
# HELP wshub_sessions WebSocket sessions open on this node.
# TYPE wshub_sessions gauge
wshub_sessions 2
# HELP wshub_users Users with at least one session on this node.
# TYPE wshub_users gauge
wshub_users 2
# HELP wshub_topics Topics with at least one session of this node in them.
# TYPE wshub_topics gauge
wshub_topics 1
# HELP wshub_sessions_accepted_total Sessions accepted: upgrades that completed.
# TYPE wshub_sessions_accepted_total counter
wshub_sessions_accepted_total 2
# HELP wshub_backplane_up 1 while the backplane can deliver across the cluster, 0 while it reports that it cannot.
# TYPE wshub_backplane_up gauge
wshub_backplane_up 1
# HELP wshub_presence_entries Entries this node holds in the presence record: users with sessions here, and each of their topics here.
# TYPE wshub_presence_entries gauge
wshub_presence_entries 4
# HELP wshub_presence_writes_failing 1 while this node's presence writes fail (they are retried), 0 otherwise.
# TYPE wshub_presence_writes_failing gauge
wshub_presence_writes_failing 0
`, "wshub_sessions", "wshub_users", "wshub_topics", "wshub_sessions_accepted_total", "wshub_backplane_up",
		"wshub_presence_entries", "wshub_presence_writes_failing")

	require.NoError(t, alice.Write(bg, websocket.MessageText, []byte("hello")))
	th.eventually(t, `
# HELP wshub_messages_received_total Messages read from clients.
# TYPE wshub_messages_received_total counter
wshub_messages_received_total 1
# HELP wshub_received_bytes_total Bytes of the messages read from clients, WebSocket framing not included.
# TYPE wshub_received_bytes_total counter
wshub_received_bytes_total 5
`, "wshub_messages_received_total", "wshub_received_bytes_total")

	require.NoError(t, th.hub.Broadcast(bg, "room", wshub.Text("hi!!")))
	for _, c := range []*websocket.Conn{alice, bob} {
		_, data, err := c.Read(bg)
		require.NoError(t, err)
		assert.Equal(t, "hi!!", string(data))
	}
	th.eventually(t, `
# HELP wshub_messages_queued_total Messages queued to this node's sessions.
# TYPE wshub_messages_queued_total counter
wshub_messages_queued_total 2
# HELP wshub_messages_sent_total Messages written to sockets.
# TYPE wshub_messages_sent_total counter
wshub_messages_sent_total 2
# HELP wshub_sent_bytes_total Bytes of the messages written to sockets, WebSocket framing not included.
# TYPE wshub_sent_bytes_total counter
wshub_sent_bytes_total 8
`, "wshub_messages_queued_total", "wshub_messages_sent_total", "wshub_sent_bytes_total")
	assert.EqualValues(t, 1, th.histogramCount(t, "wshub_publish_to_enqueue_seconds"), "one broadcast")
	assert.EqualValues(t, 2, th.histogramCount(t, "wshub_enqueue_to_write_seconds"), "one batch per session")
	th.compare(t, `
# HELP wshub_send_queue_sessions Sessions by the number of messages in their send queue now.
# TYPE wshub_send_queue_sessions gauge
wshub_send_queue_sessions{length="0"} 2
wshub_send_queue_sessions{length="1-3"} 0
wshub_send_queue_sessions{length="4-15"} 0
wshub_send_queue_sessions{length="16-63"} 0
wshub_send_queue_sessions{length="64-255"} 0
wshub_send_queue_sessions{length="256-1023"} 0
wshub_send_queue_sessions{length="1024-4095"} 0
wshub_send_queue_sessions{length="4096-16383"} 0
wshub_send_queue_sessions{length="16384+"} 0
`, "wshub_send_queue_sessions")

	require.NoError(t, alice.Close(websocket.StatusNormalClosure, ""))
	require.NoError(t, bob.CloseNow())
	th.eventually(t, `
# HELP wshub_sessions WebSocket sessions open on this node.
# TYPE wshub_sessions gauge
wshub_sessions 0
`, "wshub_sessions")
	var closed strings.Builder
	for _, r := range []string{"app", "error", "invalid_text", "normal", "rate_limit", "shutdown", "slow_queue_full", "slow_write_timeout"} {
		n := 0
		switch r {
		case "normal", "error":
			n = 1
		}
		fmt.Fprintf(&closed, "wshub_sessions_closed_total{reason=%q} %d\n", r, n)
	}
	// A session leaves the registry (wshub_sessions) just before its close
	// is counted by reason.
	th.eventually(t, closedHeader+closed.String(), "wshub_sessions_closed_total")
}

const closedHeader = "# HELP wshub_sessions_closed_total Sessions that ended, by why: " +
	"normal (the client closed with 1000, 1001, no status or an application's 3000-4999), " +
	"error (the connection dropped, a ping went unanswered, a write failed, a hook panicked or the client closed with an error status), " +
	"app (the application closed it: Session.Close, Hub.Disconnect, an OnConnect error), " +
	"shutdown (Drain or Close), " +
	"slow_queue_full (its send queue was full under SlowClose), " +
	"slow_write_timeout (a write made no progress for WriteTimeout), " +
	"rate_limit (past its Limits under RateClose), " +
	"invalid_text (a text message that is not UTF-8).\n" +
	"# TYPE wshub_sessions_closed_total counter\n"

// The backplane's link going down shows at once, and so do the publishes it
// refuses meanwhile.
func TestCollectorFollowsTheBackplane(t *testing.T) {
	th := newTestHub(t)
	require.NoError(t, th.bus.Partition("n1"))
	th.eventually(t, `
# HELP wshub_backplane_up 1 while the backplane can deliver across the cluster, 0 while it reports that it cannot.
# TYPE wshub_backplane_up gauge
wshub_backplane_up 0
# HELP wshub_backplane_downs_total Times the backplane reported its link down.
# TYPE wshub_backplane_downs_total counter
wshub_backplane_downs_total 1
`, "wshub_backplane_up", "wshub_backplane_downs_total")
	assert.Error(t, th.hub.Send(bg, "alice", wshub.Text("lost")))
	th.compare(t, `
# HELP wshub_publish_errors_total Calls of Send, Broadcast, SendSession, Join, Leave and Disconnect whose publish to the backplane failed.
# TYPE wshub_publish_errors_total counter
wshub_publish_errors_total 1
`, "wshub_publish_errors_total")
	require.NoError(t, th.bus.Heal("n1"))
	th.eventually(t, `
# HELP wshub_backplane_up 1 while the backplane can deliver across the cluster, 0 while it reports that it cannot.
# TYPE wshub_backplane_up gauge
wshub_backplane_up 1
`, "wshub_backplane_up")
}

// The names, types and help texts pass Prometheus's lint, and the
// collector exports exactly the metrics the package documents.
func TestCollectorLint(t *testing.T) {
	th := newTestHub(t)
	th.dial(t, "alice")
	problems, err := testutil.GatherAndLint(th.reg)
	require.NoError(t, err)
	assert.Empty(t, problems)

	mfs, err := th.reg.Gather()
	require.NoError(t, err)
	var got []string
	for _, mf := range mfs {
		got = append(got, mf.GetName()+" "+strings.ToLower(mf.GetType().String()))
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				assert.Contains(t, []string{"reason", "length"}, l.GetName(), "labels come from small fixed sets")
			}
		}
	}
	want := []string{
		"wshub_backplane_downs_total counter",
		"wshub_backplane_gaps_total counter",
		"wshub_backplane_messages_dropped_total counter",
		"wshub_backplane_up gauge",
		"wshub_enqueue_to_write_seconds histogram",
		"wshub_messages_dropped_total counter",
		"wshub_messages_queued_total counter",
		"wshub_messages_received_total counter",
		"wshub_messages_sent_total counter",
		"wshub_presence_entries gauge",
		"wshub_presence_writes_failing gauge",
		"wshub_publish_errors_total counter",
		"wshub_publish_to_enqueue_seconds histogram",
		"wshub_rate_limit_delays_total counter",
		"wshub_received_bytes_total counter",
		"wshub_send_queue_bytes gauge",
		"wshub_send_queue_longest_messages gauge",
		"wshub_send_queue_messages gauge",
		"wshub_send_queue_sessions gauge",
		"wshub_sent_bytes_total counter",
		"wshub_sessions gauge",
		"wshub_sessions_accepted_total counter",
		"wshub_sessions_closed_total counter",
		"wshub_sessions_refused_total counter",
		"wshub_topic_joins_refused_total counter",
		"wshub_topics gauge",
		"wshub_users gauge",
	}
	sort.Strings(got)
	assert.Equal(t, want, got)
}

// Two hubs in one process register on one registry with a label apiece.
func TestConstLabels(t *testing.T) {
	a := newTestHub(t, metrics.ConstLabels(prometheus.Labels{"node": "a"}))
	b := newTestHub(t, metrics.ConstLabels(prometheus.Labels{"node": "b"}))
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(metrics.NewCollector(a.hub, metrics.ConstLabels(prometheus.Labels{"node": "a"}))))
	require.NoError(t, reg.Register(metrics.NewCollector(b.hub, metrics.ConstLabels(prometheus.Labels{"node": "b"}))))
	a.dial(t, "alice")
	assert.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP wshub_sessions WebSocket sessions open on this node.
# TYPE wshub_sessions gauge
wshub_sessions{node="a"} 1
wshub_sessions{node="b"} 0
`), "wshub_sessions"))
	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	assert.Empty(t, problems)
}
