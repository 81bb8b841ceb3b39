package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"net/url"
	"os"
	"os/signal"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/wshub/wshub"
	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/backplane/memory"
	"github.com/wshub/wshub/examples/jobs/internal/work"
	"github.com/wshub/wshub/internal/redistest"
)

// childEnv makes the test binary run a node ("node") or a worker
// ("worker") with its arguments instead of the tests: the browser test's
// processes.
const childEnv = "WSHUB_JOBS_CHILD"

func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "node":
		main()
		os.Exit(0)
	case "worker":
		runWorkerMain()
		os.Exit(0)
	}
	// go-redis's pool can finish a dial in a goroutine that outlives
	// Client.Close for a moment when the server is gone.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).queuedNewConn.func2"))
}

// runWorkerMain is the worker command's main.
func runWorkerMain() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := work.RunWorker(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(1)
	}
}

// waitFor bounds every wait; a healthy run takes milliseconds.
const waitFor = 10 * time.Second

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// msg is any message a client receives.
type msg struct {
	Type      string `json:"type"`
	ID        string `json:"id"`
	Input     string `json:"input"`
	Output    string `json:"output"`
	Error     string `json:"error"`
	Worker    string `json:"worker"`
	Node      string `json:"node"`
	Backplane string `json:"backplane"`

	channel string // from the head, "" without one
}

// client is a user's tab: a WebSocket that resumes, read in the background.
type client struct {
	t    *testing.T
	user string
	key  string

	mu      sync.Mutex
	heads   map[string]string // channel -> last head
	got     []msg
	marks   []string // "!recovered ..." and "!not-recovered ..." heads
	conn    *websocket.Conn
	done    chan struct{}
	changed chan struct{}
}

func newClient(t *testing.T, user string) *client {
	return &client{t: t, user: user, key: user + "-tab", heads: map[string]string{}, changed: make(chan struct{}, 1)}
}

// dial connects to the server at base, resuming from the heads it has.
func (c *client) dial(base string) {
	c.t.Helper()
	q := url.Values{"user": {c.user}, wshub.PositionsParam: {"1"}, wshub.ClientParam: {c.key}}
	c.mu.Lock()
	for _, h := range c.heads {
		q.Add(wshub.SinceParam, h)
	}
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(base, "http")+"/ws?"+q.Encode(), nil)
	require.NoError(c.t, err)
	if resp.Body != nil {
		resp.Body.Close()
	}
	done := make(chan struct{})
	c.mu.Lock()
	c.conn, c.done = conn, done
	c.mu.Unlock()
	go func() {
		defer close(done)
		for {
			_, data, err := conn.Read(context.Background())
			if err != nil {
				return
			}
			c.handle(data)
		}
	}()
	c.t.Cleanup(c.close)
}

func (c *client) handle(data []byte) {
	head, body, ok := strings.Cut(string(data), "\n")
	c.mu.Lock()
	defer func() {
		c.mu.Unlock()
		select {
		case c.changed <- struct{}{}:
		default:
		}
	}()
	if !ok {
		c.marks = append(c.marks, "no head: "+string(data))
		return
	}
	if strings.HasPrefix(head, "!") {
		c.marks = append(c.marks, head)
		return
	}
	var m msg
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		c.marks = append(c.marks, "not JSON: "+body)
		return
	}
	if head != "" {
		_, esc, _ := strings.Cut(head, " ")
		m.channel, _ = url.PathUnescape(esc)
		c.heads[m.channel] = head
	}
	c.got = append(c.got, m)
}

// close closes the connection and waits for its reader.
func (c *client) close() {
	c.mu.Lock()
	conn, done := c.conn, c.done
	c.conn = nil
	c.mu.Unlock()
	if conn == nil {
		return
	}
	_ = conn.Close(websocket.StatusNormalClosure, "")
	<-done
}

func (c *client) send(id, input string) {
	c.t.Helper()
	c.mu.Lock()
	conn := c.conn
	c.mu.Unlock()
	b, _ := json.Marshal(inbound{ID: id, Input: input})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(c.t, conn.Write(ctx, websocket.MessageText, b))
}

// messages returns the messages of type typ received so far.
func (c *client) messages(typ string) []msg {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []msg
	for _, m := range c.got {
		if m.Type == typ {
			out = append(out, m)
		}
	}
	return out
}

// wait waits until at least n messages of type typ have come.
func (c *client) wait(typ string, n int) []msg {
	c.t.Helper()
	deadline := time.After(waitFor)
	for {
		if got := c.messages(typ); len(got) >= n {
			return got
		}
		select {
		case <-c.changed:
		case <-deadline:
			c.t.Fatalf("%s: %d %q messages, want %d: %+v", c.user, len(c.messages(typ)), typ, n, c.messages(""))
		}
	}
}

// ids returns the job IDs of ms in order.
func ids(ms []msg) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.ID
	}
	return out
}

// memNode returns a node of bus, closed when the test ends (after the hub
// on it, whose cleanup is registered later).
func memNode(t *testing.T, bus *memory.Bus, id string) *memory.Node {
	t.Helper()
	n, err := bus.NewNode(id)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, n.Close()) })
	return n
}

// startApp serves the jobs app on bp with an httptest server.
func startApp(t *testing.T, bp backplane.Backplane, node string, q work.Queue) (*app, *httptest.Server) {
	t.Helper()
	a, err := newApp(bp, node, q, quiet)
	require.NoError(t, err)
	srv := httptest.NewServer(a)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		assert.NoError(t, a.Close(ctx))
		srv.Close()
	})
	return a, srv
}

// startWorker runs w until the test ends.
func startWorker(t *testing.T, w *work.Worker) {
	if w.Logger == nil {
		w.Logger = quiet
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// countingSender counts the results a worker sent.
type countingSender struct {
	work.Sender
	sent atomic.Int64
}

func (s *countingSender) Send(ctx context.Context, user string, m wshub.Message) error {
	err := s.Sender.Send(ctx, user, m)
	if err == nil {
		s.sent.Add(1)
	}
	return err
}

// reverseDelay makes job "<prefix>-<k>" take (n-k) steps: the later a job
// was sent, the sooner its result comes.
func reverseDelay(n int, step time.Duration) func(work.Job) time.Duration {
	return func(j work.Job) time.Duration {
		k, _ := strconv.Atoi(j.ID[strings.LastIndexByte(j.ID, '-')+1:])
		return time.Duration(max(n-k, 0)) * step
	}
}

// Two users on two nodes send jobs; one worker answers them out of order.
// Each user gets exactly one result per job of theirs, none of the other's,
// with the right output.
func TestEveryJobAnsweredOnceToItsUserOutOfOrder(t *testing.T) {
	bus := memory.NewBus()
	n0, n1 := memNode(t, bus, "n0"), memNode(t, bus, "n1")
	q := work.NewMemory(100)
	a0, s0 := startApp(t, n0, "n0", q)
	_, s1 := startApp(t, n1, "n1", q)
	const n = 10
	startWorker(t, &work.Worker{Queue: q, Hub: a0.hub, Name: "w", Concurrency: 2 * n, Delay: reverseDelay(n, 20*time.Millisecond)})

	alice, bob := newClient(t, "alice"), newClient(t, "bob")
	alice.dial(s0.URL)
	bob.dial(s1.URL) // on the other node than the worker's hub
	alice.wait("welcome", 1)
	bob.wait("welcome", 1)
	inputs := map[string]string{}
	var sentA, sentB []string
	for k := 1; k <= n; k++ {
		ia, ib := strconv.Itoa(360*k), strconv.Itoa(1000+k)
		alice.send(fmt.Sprintf("a-%d", k), ia)
		bob.send(fmt.Sprintf("b-%d", k), ib)
		inputs[fmt.Sprintf("a-%d", k)], inputs[fmt.Sprintf("b-%d", k)] = ia, ib
		sentA, sentB = append(sentA, fmt.Sprintf("a-%d", k)), append(sentB, fmt.Sprintf("b-%d", k))
	}
	for _, tc := range []struct {
		c    *client
		sent []string
	}{{alice, sentA}, {bob, sentB}} {
		got := tc.c.wait("result", n)
		assert.ElementsMatch(t, tc.sent, ids(got), "%s: one result per job, only theirs", tc.c.user)
		assert.NotEqual(t, tc.sent, ids(got), "%s: results out of order", tc.c.user)
		for _, m := range got {
			want, _ := work.Compute(inputs[m.ID])
			assert.Equal(t, want, m.Output, m.ID)
		}
		assert.ElementsMatch(t, tc.sent, ids(tc.c.wait("queued", n)))
	}
	time.Sleep(50 * time.Millisecond) // nothing more comes
	assert.Len(t, alice.messages("result"), n)
	assert.Len(t, bob.messages("result"), n)
}

// A job sent again with the same ID (the client did not see it queued) is
// queued and answered once.
func TestJobSentTwiceIsAnsweredOnce(t *testing.T) {
	q := work.NewMemory(100)
	a, srv := startApp(t, nil, "n0", q)
	startWorker(t, &work.Worker{Queue: q, Hub: a.hub, Name: "w", Delay: func(work.Job) time.Duration { return 0 }})
	c := newClient(t, "carol")
	c.dial(srv.URL)
	c.send("j1", "97")
	c.send("j1", "97")
	c.send("j2", "98")
	got := c.wait("result", 2)
	assert.ElementsMatch(t, []string{"j1", "j2"}, ids(got))
	assert.Equal(t, "97", got[slices.IndexFunc(got, func(m msg) bool { return m.ID == "j1" })].Output)
	time.Sleep(50 * time.Millisecond)
	assert.Len(t, c.messages("result"), 2)
}

func TestInvalidJobs(t *testing.T) {
	q := work.NewMemory(100)
	a, srv := startApp(t, nil, "n0", q)
	startWorker(t, &work.Worker{Queue: q, Hub: a.hub, Name: "w", Delay: func(work.Job) time.Duration { return 0 }})
	c := newClient(t, "dave")
	c.dial(srv.URL)
	for _, raw := range []string{`nope`, `{"id":"","input":"1"}`, `{"id":"a b","input":"1"}`, `{"id":"x"}`, `{"id":"x","input":"` + strings.Repeat("9", 300) + `"}`} {
		c.mu.Lock()
		conn := c.conn
		c.mu.Unlock()
		require.NoError(t, conn.Write(context.Background(), websocket.MessageText, []byte(raw)))
	}
	assert.Len(t, c.wait("error", 5), 5)
	c.send("bad", "not a number") // valid job, failed computation
	got := c.wait("result", 1)
	assert.Equal(t, "bad", got[0].ID)
	assert.Contains(t, got[0].Error, "not a whole number")
}

// A client sends jobs on node A and goes away; the results are sent while
// it is away. It reconnects to node B, resumes, and gets every one of them,
// once. On Redis Streams (real redis-server) and on a memory bus that keeps
// logs.
func TestResultsSentWhileAwayArriveOnAnotherNode(t *testing.T) {
	for _, tt := range []struct {
		name  string
		setup func(t *testing.T) (bpA, bpB, bpW backplane.Backplane, q work.Queue)
	}{
		{"memory", func(t *testing.T) (backplane.Backplane, backplane.Backplane, backplane.Backplane, work.Queue) {
			bus := memory.NewBus()
			require.NoError(t, bus.SetLogLimit(1000, time.Minute))
			var bps []backplane.Backplane
			for _, id := range []string{"a", "b", "w"} {
				bps = append(bps, memNode(t, bus, id))
			}
			return bps[0], bps[1], bps[2], work.NewMemory(100)
		}},
		{"redis streams", func(t *testing.T) (backplane.Backplane, backplane.Backplane, backplane.Backplane, work.Queue) {
			srv := redistest.Start(t)
			var bps []backplane.Backplane
			for range 3 {
				bp, err := backplane.Open(context.Background(), work.StreamsURL(srv.URL()))
				require.NoError(t, err)
				t.Cleanup(func() { assert.NoError(t, bp.Close()) })
				bps = append(bps, bp)
			}
			q, err := work.NewRedis(context.Background(), srv.Client(t), &work.RedisOptions{Logger: quiet})
			require.NoError(t, err)
			return bps[0], bps[1], bps[2], q
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			bpA, bpB, bpW, q := tt.setup(t)
			_, srvA := startApp(t, bpA, "a", q)
			_, srvB := startApp(t, bpB, "b", q)
			// The worker has a hub of its own, serving no one, as the
			// worker command does.
			wh, err := wshub.New(&wshub.Options{Backplane: bpW, NodeID: "w", Logger: quiet})
			require.NoError(t, err)
			t.Cleanup(func() { assert.NoError(t, wh.Close(context.Background())) })
			sender := &countingSender{Sender: wh}
			const n = 6
			startWorker(t, &work.Worker{Queue: q, Hub: sender, Name: "w", Concurrency: n, Delay: reverseDelay(n+2, 40*time.Millisecond)})

			c := newClient(t, "erin")
			c.dial(srvA.URL)
			c.wait("welcome", 1)
			var sent []string
			for k := 1; k <= n; k++ {
				sent = append(sent, fmt.Sprintf("j-%d", k))
				c.send(sent[k-1], strconv.Itoa(1<<k))
			}
			c.wait("queued", n)
			c.close()
			before := len(c.messages("result"))
			require.Less(t, before, n, "some results are still to come when the client leaves")
			require.Eventually(t, func() bool { return sender.sent.Load() == n }, waitFor, 5*time.Millisecond, "the worker sends every result")

			c.dial(srvB.URL) // the resume parameters carry the last head
			got := c.wait("result", n)
			assert.Equal(t, sent, uniq(ids(got)), "every job answered")
			assert.Len(t, got, n, "each once")
			assert.Equal(t, "b", c.wait("welcome", 2)[1].Node)
			require.Eventually(t, func() bool {
				c.mu.Lock()
				defer c.mu.Unlock()
				return slices.Contains(c.marks, "!recovered u:erin")
			}, waitFor, 5*time.Millisecond, "the resume ends with !recovered")
			c.mu.Lock()
			for _, m := range c.marks {
				assert.NotContains(t, m, "not-recovered")
			}
			c.mu.Unlock()
		})
	}
}

func uniq(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, v := range s {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	slices.SortFunc(out, func(a, b string) int {
		x, _ := strconv.Atoi(a[strings.LastIndexByte(a, '-')+1:])
		y, _ := strconv.Atoi(b[strings.LastIndexByte(b, '-')+1:])
		return x - y
	})
	return out
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

var listening = regexp.MustCompile(`msg="jobs listening" addr=(\S+)`)

// The command as the README runs it: one process, memory, workers inside.
func TestRunOnMemory(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	out := &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"-addr", "127.0.0.1:0", "-node", "n1", "-drain", "1s"}, out) }()
	defer func() {
		cancel()
		select {
		case err := <-done:
			assert.NoError(t, err)
		case <-time.After(waitFor):
			t.Error("run did not return")
		}
	}()
	var base string
	require.Eventually(t, func() bool {
		m := listening.FindStringSubmatch(out.String())
		if m != nil {
			base = "http://" + m[1]
		}
		return m != nil
	}, waitFor, 5*time.Millisecond, "%s", out)
	c := newClient(t, "frank")
	c.dial(base)
	c.send("j1", "360")
	got := c.wait("result", 1)
	assert.Equal(t, "2^3 × 3^2 × 5", got[0].Output)
	assert.Equal(t, "n1", got[0].Node)
	c.close()
}

func TestRunBadArguments(t *testing.T) {
	for _, args := range [][]string{{"extra"}, {"-redis", "http://x"}, {"-nope"}} {
		assert.Error(t, run(context.Background(), args, io.Discard), "%q", args)
	}
	assert.Error(t, work.RunWorker(context.Background(), nil, io.Discard), "-redis is required")
	assert.Error(t, work.RunWorker(context.Background(), []string{"-redis", "redis://127.0.0.1:1/0", "-min-delay", "2s", "-max-delay", "1s"}, io.Discard))
}
