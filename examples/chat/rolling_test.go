package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub"
	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/internal/redistest"
)

// childEnv, set to 1, makes the test binary run the chat command with its
// arguments instead of the tests (see TestMain): a chat node in a process
// of its own.
const childEnv = "WSHUB_CHAT_CHILD"

// The rolling restart's bounds: the test stops by itself within them.
const (
	rollingDeadline = 3 * time.Minute       // the whole test, whatever happens
	stopTimeout     = 30 * time.Second      // for a signalled node to exit
	sendPause       = 2 * time.Millisecond  // between two rounds of the sender
	maxRounds       = 60000                 // rounds the sender makes at most
	probeEvery      = 25 * time.Millisecond // the balancer's readiness checks
	settle          = 100                   // messages each tab gets between two restarts
)

// TestRollingRestart is the proof that a deploy loses nothing: three chat
// processes on a real Redis in Streams mode, behind a round-robin reverse
// proxy that keeps the Host header and follows /readyz, with clients that
// resume. While a sender sends to users (Send) and to rooms (Broadcast),
// every node is restarted in turn (SIGTERM: drain, close, exit; then
// started again), and one is then killed outright (SIGKILL) and started
// again. Every client must get every message sent to it exactly once, in
// order per channel.
func TestRollingRestart(t *testing.T) {
	srv := redistest.Start(t)
	begin := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), rollingDeadline)
	defer cancel()
	bpURL := "redis://" + srv.Addr() + "/0?mode=streams&max_len=100000&prefix=rolling-" + randomHex() + ":"

	lb := newBalancer(t, 3)
	nodes := make([]*nodeProc, 3)
	for i := range nodes {
		nodes[i] = startNode(t, fmt.Sprintf("%c1", 'a'+i), bpURL)
		lb.set(i, nodes[i].addr)
	}
	for i := range nodes {
		lb.waitReady(t, i, true)
	}

	// The clients: eight users, two of them with a second tab; every tab
	// is in the lobby, the even users' tabs in "ops" too.
	users := []string{"u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7"}
	var tabs []*tab
	for i, u := range users {
		rooms := []string{lobby}
		if i%2 == 0 {
			rooms = append(rooms, "ops")
		}
		tabs = append(tabs, newTab(u, "1", rooms))
		if i < 2 {
			tabs = append(tabs, newTab(u, "2", rooms))
		}
	}
	httpc := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(httpc.CloseIdleConnections)
	cctx, stopClients := context.WithCancel(ctx)
	var clients sync.WaitGroup
	defer func() { stopClients(); clients.Wait() }()
	for _, c := range tabs {
		clients.Add(1)
		go func() { defer clients.Done(); c.run(cctx, lb.url, httpc) }()
	}
	require.Eventually(t, func() bool {
		for _, c := range tabs {
			if c.snapshot().connects == 0 {
				return false
			}
		}
		return true
	}, waitFor, 5*time.Millisecond, "every tab connects")

	// The sender: a hub of its own on the same Redis that serves no one.
	bp, err := backplane.Open(ctx, bpURL)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, bp.Close()) })
	sendHub, err := wshub.New(&wshub.Options{Backplane: bp, Logger: quiet})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, sendHub.Close(context.Background())) })
	snd := &sender{hub: sendHub, users: users, sent: map[string]int{}, retried: map[string]map[int]bool{}}
	stopSending := make(chan struct{})
	sent := make(chan map[string]int, 1)
	go func() { sent <- snd.run(ctx, stopSending) }()
	stopped := false
	stopSender := func() map[string]int {
		if !stopped {
			stopped = true
			close(stopSending)
		}
		return <-sent
	}
	defer func() {
		if !stopped {
			stopSender()
		}
	}()

	// Every tab has a head on each of its channels before the first
	// restart: from then on it can resume them all.
	waitTabs(t, tabs, "a message on each channel", func(c *tab, s tabState) bool {
		for _, ch := range c.channels() {
			if len(s.got[ch]) == 0 {
				return false
			}
		}
		return true
	})

	restart := func(slot int, sig syscall.Signal, id string) {
		t.Helper()
		before := map[*tab]int{}
		for _, c := range tabs {
			before[c] = c.snapshot().received
		}
		old := nodes[slot]
		old.signal(t, sig)
		old.wait(t, sig == syscall.SIGTERM)
		if sig == syscall.SIGTERM {
			out := old.out.String()
			assert.Contains(t, out, "chat draining", old.id)
			assert.Contains(t, out, "chat stopped", old.id)
			assert.NotContains(t, out, "drain incomplete", old.id)
		}
		lb.waitReady(t, slot, false)
		nodes[slot] = startNode(t, id, bpURL)
		lb.set(slot, nodes[slot].addr)
		lb.waitReady(t, slot, true)
		// Traffic flows again to every tab, wherever it is now, and goes
		// on for a while on the full cluster before the next restart.
		waitTabs(t, tabs, "messages after the restart of "+old.id, func(c *tab, s tabState) bool {
			return s.received > before[c]
		})
		for _, c := range tabs {
			before[c] = c.snapshot().received
		}
		waitTabs(t, tabs, "traffic on the full cluster", func(c *tab, s tabState) bool {
			return s.received >= before[c]+settle
		})
	}
	for slot := range nodes {
		restart(slot, syscall.SIGTERM, fmt.Sprintf("%c2", 'a'+slot))
	}
	restart(0, syscall.SIGKILL, "a3")

	want := stopSender()
	waitTabs(t, tabs, "every message", func(c *tab, s tabState) bool {
		for _, ch := range c.channels() {
			if got := s.got[ch]; len(got) == 0 || got[len(got)-1] != want[ch] {
				return false
			}
		}
		return true
	})
	stopClients()
	clients.Wait()

	var total, delivered, drains, cuts, refused, resumes, recovered, connects int
	for _, n := range want {
		total += n
	}
	perNode := map[string]int{}
	for _, c := range tabs {
		s := c.snapshot()
		assert.Empty(t, s.problems, "%s", c.name())
		for _, ch := range c.channels() {
			checkExactlyOnce(t, c.name()+" "+ch, s.got[ch], want[ch], snd.retried[ch])
			delivered += len(s.got[ch])
		}
		drains += s.drains
		cuts += s.cuts
		refused += s.refused
		resumes += s.resumes
		recovered += s.recovered
		connects += s.connects
		for id, n := range s.nodes {
			perNode[id] += n
		}
	}
	assert.GreaterOrEqual(t, drains, 3, "tabs closed with 1012 by the drains")
	assert.GreaterOrEqual(t, cuts, 1, "tabs cut by the kill")
	assert.Equal(t, drains+cuts+len(tabs), connects, "every tab reconnected after each close, and only then")
	assert.Equal(t, resumes, recovered, "every channel a reconnect named was recovered")
	t.Logf("rolling restart: %d messages sent (%d publish errors retried), %d delivered to %d tabs, "+
		"4 restarts (3 drained, 1 killed) in %v; %d closes by drain (1012), %d cuts, %d upgrades refused "+
		"while nodes went and came, %d connections (per node %v), %d channels resumed (!recovered)",
		total, snd.failures, delivered, len(tabs), time.Since(begin).Round(time.Millisecond),
		drains, cuts, refused, connects, perNode, recovered)
}

// checkExactlyOnce checks that got is 1..n, in order, each once; a
// message whose publish failed and was retried may come twice in a row
// (the failed publish may have reached Redis), nothing else may.
func checkExactlyOnce(t *testing.T, what string, got []int, n int, retried map[int]bool) {
	t.Helper()
	next := 1
	for i, seq := range got {
		switch {
		case seq == next:
			next++
		case seq == next-1 && retried[seq]:
			// the retry of a publish that failed but had gone through
		default:
			t.Errorf("%s: message %d is #%d, want #%d (lost or duplicated); around it: %v",
				what, i, seq, next, got[max(0, i-3):min(len(got), i+4)])
			return
		}
	}
	assert.Equal(t, n, next-1, "%s: messages received", what)
}

func randomHex() string { return strconv.FormatUint(rand.Uint64(), 16) }

// nodeProc is one chat node run as a process of its own: the test binary
// with childEnv set.
type nodeProc struct {
	id   string
	cmd  *exec.Cmd
	out  *syncBuffer // its logs
	addr string      // where it listens
	done chan struct{}
	err  error // Wait's, valid once done is closed
}

// startNode starts a chat node with ID id on the backplane bpURL and waits
// until it listens.
func startNode(t *testing.T, id, bpURL string) *nodeProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-addr", "127.0.0.1:0", "-node", id, "-backplane", bpURL, "-drain", "10s")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	p := &nodeProc{id: id, cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	require.NoError(t, cmd.Start())
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill() // a node the test did not stop
		<-p.done
		if t.Failed() {
			t.Logf("node %s logs (last 3000 bytes):\n%s", id, tail(p.out.String(), 3000))
		}
	})
	listening := regexp.MustCompile(`msg="chat listening" addr=(\S+)`)
	deadline := time.After(waitFor)
	for p.addr == "" {
		if m := listening.FindStringSubmatch(p.out.String()); m != nil {
			p.addr = m[1]
			break
		}
		select {
		case <-p.done:
			t.Fatalf("node %s exited (%v) before it listened: %s", id, p.err, p.out)
		case <-deadline:
			t.Fatalf("node %s did not log its address: %s", id, p.out)
		case <-time.After(5 * time.Millisecond):
		}
	}
	return p
}

func (p *nodeProc) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(sig), p.id)
}

// wait waits for the process to exit, successfully when clean is set.
func (p *nodeProc) wait(t *testing.T, clean bool) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		t.Fatalf("node %s did not exit", p.id)
	}
	if clean {
		require.NoError(t, p.err, "node %s: %s", p.id, tail(p.out.String(), 3000))
	}
}

func tail(s string, n int) string { return s[max(0, len(s)-n):] }

// balancer is a small load balancer in front of the nodes: a
// httputil.ReverseProxy that keeps the Host header and sends each request
// to the next ready backend, round robin. A backend is ready while its
// /readyz answers 200, checked every probeEvery, as a load balancer or
// Kubernetes does.
type balancer struct {
	url  string
	srv  *httptest.Server
	rp   *httputil.ReverseProxy
	tr   *http.Transport
	stop chan struct{}
	wg   sync.WaitGroup

	mu    sync.Mutex
	addrs []string // per slot, "" while none
	ready []bool
	next  int
}

type targetKey struct{}

func newBalancer(t *testing.T, slots int) *balancer {
	t.Helper()
	b := &balancer{addrs: make([]string, slots), ready: make([]bool, slots), stop: make(chan struct{}), tr: &http.Transport{}}
	b.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(&url.URL{Scheme: "http", Host: pr.In.Context().Value(targetKey{}).(string)})
			pr.Out.Host = pr.In.Host // keep Host, for the origin check
			pr.SetXForwarded()
		},
		Transport: b.tr,
		// A backend that went away between its last check and this
		// request: the client tries again, as it would behind any proxy.
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, _ error) { w.WriteHeader(http.StatusBadGateway) },
	}
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		addr := b.pick()
		if addr == "" {
			w.Header().Set("Retry-After", "1")
			http.Error(w, "no backend ready", http.StatusServiceUnavailable)
			return
		}
		b.rp.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), targetKey{}, addr)))
	}))
	b.url = b.srv.URL
	b.wg.Add(1)
	go b.probe()
	t.Cleanup(func() {
		close(b.stop)
		b.wg.Wait()
		b.srv.Close()
		b.tr.CloseIdleConnections()
	})
	return b
}

// set points slot at addr, not ready until its check passes.
func (b *balancer) set(slot int, addr string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.addrs[slot], b.ready[slot] = addr, false
}

func (b *balancer) pick() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	for range b.addrs {
		i := b.next % len(b.addrs)
		b.next++
		if b.ready[i] {
			return b.addrs[i]
		}
	}
	return ""
}

// waitReady waits until slot is ready, or not.
func (b *balancer) waitReady(t *testing.T, slot int, want bool) {
	t.Helper()
	require.Eventually(t, func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.ready[slot] == want
	}, waitFor, time.Millisecond, "slot %d ready: %v", slot, want)
}

// probe checks every backend's readiness every probeEvery until stopped.
func (b *balancer) probe() {
	defer b.wg.Done()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 500 * time.Millisecond}
	tick := time.NewTicker(probeEvery)
	defer tick.Stop()
	for {
		b.mu.Lock()
		addrs := slices.Clone(b.addrs)
		b.mu.Unlock()
		for i, addr := range addrs {
			if addr == "" {
				continue
			}
			ok := false
			if resp, err := c.Get("http://" + addr + "/readyz"); err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				ok = resp.StatusCode == http.StatusOK
			}
			b.mu.Lock()
			if b.addrs[i] == addr {
				b.ready[i] = ok
			}
			b.mu.Unlock()
		}
		select {
		case <-b.stop:
			return
		case <-tick.C:
		}
	}
}

// tab is a client that resumes, as the chat's page does: it keeps the last
// head of each channel and, when its connection is closed with 1012 or
// cut, reconnects at once through the balancer with wshub_since and
// wshub_client, naming its rooms. It records the sender's messages per
// channel.
type tab struct {
	user, key string
	rooms     []string

	mu    sync.Mutex
	heads map[string]string // channel → the last head received
	st    tabState
}

// tabState is what a tab saw.
type tabState struct {
	got       map[string][]int // channel → the sender's sequence numbers, as received
	received  int              // messages of the sender's
	connects  int              // connections opened
	drains    int              // connections closed with 1012
	cuts      int              // connections cut without a close
	refused   int              // upgrades refused or failed
	resumes   int              // channels asked to resume (wshub_since)
	recovered int              // "!recovered" heads
	nodes     map[string]int   // node ID → connections it served
	problems  []string         // anything else
}

func newTab(user, n string, rooms []string) *tab {
	return &tab{user: user, key: user + "-tab" + n, rooms: rooms, heads: map[string]string{}, st: tabState{got: map[string][]int{}, nodes: map[string]int{}}}
}

func (c *tab) name() string { return c.key }

// channels returns the channels the tab receives the sender's messages on.
func (c *tab) channels() []string {
	chs := []string{"u:" + c.user}
	for _, r := range c.rooms {
		chs = append(chs, "t:"+r)
	}
	return chs
}

// snapshot returns a copy of what the tab saw.
func (c *tab) snapshot() tabState {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.st
	s.got = make(map[string][]int, len(c.st.got))
	for ch, v := range c.st.got {
		s.got[ch] = slices.Clone(v)
	}
	s.problems = slices.Clone(c.st.problems)
	s.nodes = maps.Clone(c.st.nodes)
	return s
}

func (c *tab) problem(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.st.problems) < 10 {
		c.st.problems = append(c.st.problems, fmt.Sprintf(format, args...))
	}
}

// run connects, reads and reconnects until ctx ends.
func (c *tab) run(ctx context.Context, base string, httpc *http.Client) {
	for ctx.Err() == nil {
		dctx, cancel := context.WithTimeout(ctx, waitFor)
		u, resumes := c.dialURL(base)
		conn, _, err := websocket.Dial(dctx, u, &websocket.DialOptions{HTTPClient: httpc})
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			c.mu.Lock()
			c.st.refused++
			c.mu.Unlock()
			// A node that drains, or none ready: try again soon,
			// with jitter, as the page does after a 1012.
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Duration(5+rand.IntN(20)) * time.Millisecond):
			}
			continue
		}
		conn.SetReadLimit(-1)
		c.mu.Lock()
		c.st.connects++
		c.st.resumes += resumes
		c.mu.Unlock()
		err = c.read(ctx, conn)
		_ = conn.CloseNow()
		if ctx.Err() != nil {
			return
		}
		c.mu.Lock()
		switch code := websocket.CloseStatus(err); code {
		case websocket.StatusServiceRestart:
			c.st.drains++
		case -1: // no close frame: the node was killed
			c.st.cuts++
		default:
			c.st.problems = append(c.st.problems, fmt.Sprintf("closed with %d: %v", code, err))
		}
		c.mu.Unlock()
	}
}

// dialURL returns the upgrade URL: the user, the rooms, the tab's key and
// the last head of each channel; and how many channels it resumes.
func (c *tab) dialURL(base string) (string, int) {
	q := url.Values{"name": {c.user}, "room": c.rooms, wshub.ClientParam: {c.key}, wshub.PositionsParam: {"1"}}
	c.mu.Lock()
	for _, ch := range slices.Sorted(maps.Keys(c.heads)) {
		q.Add(wshub.SinceParam, c.heads[ch])
	}
	n := len(c.heads)
	c.mu.Unlock()
	return "ws" + strings.TrimPrefix(base, "http") + "/ws?" + q.Encode(), n
}

// read handles the connection's messages until it ends.
func (c *tab) read(ctx context.Context, conn *websocket.Conn) error {
	for {
		_, data, err := conn.Read(ctx)
		if err != nil {
			return err
		}
		c.handle(data)
	}
}

func (c *tab) handle(data []byte) {
	head, body, ok := strings.Cut(string(data), "\n")
	if !ok {
		c.problem("a message without a head: %.80q", data)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if strings.HasPrefix(head, "!") {
		if !strings.HasPrefix(head, "!recovered ") {
			c.st.problems = append(c.st.problems, head) // !not-recovered: lost
		}
		c.st.recovered++
		return
	}
	var ch string
	if head != "" {
		_, esc, _ := strings.Cut(head, " ")
		ch, _ = url.PathUnescape(esc)
		c.heads[ch] = head
	}
	var e event
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		c.st.problems = append(c.st.problems, fmt.Sprintf("not JSON: %.80q", body))
		return
	}
	if e.Type == "welcome" {
		c.st.nodes[e.Node]++
	}
	if e.From != "sender" {
		return // the welcome, joined, members, presence...
	}
	want := "t:" + e.Room
	if e.Type == "dm" {
		want = "u:" + e.To
	}
	seq, err := strconv.Atoi(e.Text)
	if ch != want || err != nil {
		c.st.problems = append(c.st.problems, fmt.Sprintf("head %q for %s", head, body))
		return
	}
	c.st.got[ch] = append(c.st.got[ch], seq)
	c.st.received++
}

// waitTabs waits until ok holds for every tab, failing with what as the
// description.
func waitTabs(t *testing.T, tabs []*tab, what string, ok func(*tab, tabState) bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var behind []string
		for _, c := range tabs {
			if s := c.snapshot(); !ok(c, s) {
				behind = append(behind, c.name())
			}
		}
		if len(behind) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %v still behind", what, behind)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// sender sends numbered messages, as the chat's JSON, to the rooms
// (Broadcast) and to each user in turn (Send): per channel, message n has
// the text n. A publish that fails is retried with the same number, so
// that the check tells the duplicate of a retry (allowed once, right
// after) from a duplicate delivery (never allowed).
type sender struct {
	hub      *wshub.Hub
	users    []string
	sent     map[string]int          // channel → the last number published
	retried  map[string]map[int]bool // channel → the numbers retried
	failures int                     // failed publishes (each retried)
}

// run sends a round every sendPause, at most maxRounds, until stop is
// closed, and returns the last number sent on each channel.
func (s *sender) run(ctx context.Context, stop <-chan struct{}) map[string]int {
	for round := 0; round < maxRounds; round++ {
		user := s.users[round%len(s.users)]
		for _, ch := range []string{"t:" + lobby, "t:ops", "u:" + user} {
			if !s.publish(ctx, ch) {
				return s.sent
			}
		}
		select {
		case <-stop:
			return s.sent
		case <-ctx.Done():
			return s.sent
		case <-time.After(sendPause):
		}
	}
	return s.sent
}

// publish sends the next message of ch, retrying a failed publish for up
// to 5s; it reports false when it gave up.
func (s *sender) publish(ctx context.Context, ch string) bool {
	seq := s.sent[ch] + 1
	name := ch[2:]
	for attempt := 0; ; attempt++ {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		var err error
		if ch[0] == 't' {
			err = s.hub.Broadcast(pctx, name, encode(outbound{Type: "message", Room: name, From: "sender", Text: strconv.Itoa(seq)}))
		} else {
			err = s.hub.Send(pctx, name, encode(outbound{Type: "dm", From: "sender", To: name, Text: strconv.Itoa(seq)}))
		}
		cancel()
		if err == nil {
			s.sent[ch] = seq
			return true
		}
		s.failures++
		if s.retried[ch] == nil {
			s.retried[ch] = map[int]bool{}
		}
		s.retried[ch][seq] = true
		if attempt == 50 || ctx.Err() != nil {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}
