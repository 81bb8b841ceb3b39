package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub"
	"github.com/wshub/wshub/backplane/memory"
	"github.com/wshub/wshub/examples/jobs/internal/work"
	"github.com/wshub/wshub/internal/browsertest"
	"github.com/wshub/wshub/internal/redistest"
)

// scriptTimeout bounds each browser script.
const scriptTimeout = 60 * time.Second

// The page on one node on memory, its workers inside: two bursts of jobs
// answered out of order, matched by ID; the second burst's results come
// after the connection was cut (1012) and the page resumed.
func TestBrowserMemory(t *testing.T) {
	browsertest.Need(t)
	bus := memory.NewBus()
	require.NoError(t, bus.SetLogLimit(1000, time.Minute))
	q := work.NewMemory(100)
	a, srv := startApp(t, memNode(t, bus, "m1"), "m1", q)
	// The later a job of a burst, the sooner its result.
	startWorker(t, &work.Worker{Queue: q, Hub: a.hub, Name: "w1", Concurrency: 16, Logger: quiet,
		Delay: burstDelay})
	control := browsertest.Control(t, map[string]func(map[string]string) error{
		"disconnect": func(p map[string]string) error {
			return a.hub.Disconnect(context.Background(), p["user"], wshub.StatusServiceRestart, "test")
		},
	})
	browsertest.Run(t, "jobs.mjs", map[string]any{"url": srv.URL, "control": control, "mode": "memory"}, scriptTimeout)
}

// burstDelay makes the k-th job of each burst of 8 ("j-<prefix>-<k>")
// take (8-(k-1)%8)×120ms.
func burstDelay(j work.Job) time.Duration {
	k, _ := strconv.Atoi(j.ID[strings.LastIndexByte(j.ID, '-')+1:])
	return time.Duration(8-(k-1)%8) * 120 * time.Millisecond
}

// Two node processes and a worker process on a real redis-server, behind a
// failover proxy: the page's node is killed (SIGKILL) while results are on
// their way, and the page resumes on the other node; then Redis is stopped
// and restarted (append-only file): the page shows the outage, the jobs in
// the consumer group are still computed, and new jobs flow again. Every
// job gets exactly one result.
func TestBrowserTwoNodesOnRedis(t *testing.T) {
	browsertest.Need(t)
	rs := redistest.Start(t, redistest.WithAppendOnly())
	nodeA := startProc(t, "node", "-redis", rs.URL(), "-node", "a1", "-addr", "127.0.0.1:0", "-drain", "0")
	nodeB := startProc(t, "node", "-redis", rs.URL(), "-node", "b1", "-addr", "127.0.0.1:0", "-drain", "0")
	startProc(t, "worker", "-redis", rs.URL(), "-name", "w1", "-concurrency", "3", "-min-delay", "200ms", "-max-delay", "900ms")
	proxy := newFailover(t, nodeA.addr, nodeB.addr)
	control := browsertest.Control(t, map[string]func(map[string]string) error{
		"kill": func(map[string]string) error { return nodeA.kill() },
		"redis-stop": func(map[string]string) error {
			rs.Stop(t)
			return nil
		},
		"redis-start": func(map[string]string) error {
			rs.Restart(t)
			return nil
		},
	})
	browsertest.Run(t, "jobs.mjs", map[string]any{"url": proxy, "control": control, "mode": "redis"}, scriptTimeout)
}

// proc is a node or a worker run as a process of its own: the test binary
// with childEnv set.
type proc struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	addr string // a node's listen address
	done chan struct{}
}

var started = regexp.MustCompile(`msg="(?:jobs listening" addr=(\S+)|worker started")`)

func startProc(t *testing.T, role string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), childEnv+"="+role)
	p := &proc{cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	require.NoError(t, cmd.Start())
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.kill()
		if t.Failed() {
			t.Logf("%s %q logs (last 4000 bytes):\n%s", role, args, tail(p.out.String(), 4000))
		}
	})
	deadline := time.After(waitFor)
	for {
		if m := started.FindStringSubmatch(p.out.String()); m != nil {
			p.addr = m[1]
			return p
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited before it started: %s", role, p.out)
		case <-deadline:
			t.Fatalf("%s did not start: %s", role, p.out)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// kill kills the process with SIGKILL, like a crash, and waits for it.
func (p *proc) kill() error {
	err := p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
		return nil
	case <-time.After(waitFor):
		return errors.Join(err, errors.New("the process did not exit"))
	}
}

func tail(s string, n int) string { return s[max(0, len(s)-n):] }

// newFailover starts a tiny reverse proxy that sends each request, the
// WebSocket upgrades too, to the first of addrs that accepts a connection,
// and returns its URL.
func newFailover(t *testing.T, addrs ...string) string {
	t.Helper()
	var d net.Dialer
	tr := &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var errs []error
			for _, a := range addrs {
				c, err := d.DialContext(ctx, "tcp", a)
				if err == nil {
					return c, nil
				}
				errs = append(errs, err)
			}
			return nil, errors.Join(errs...)
		},
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(&url.URL{Scheme: "http", Host: "backend"})
			pr.Out.Host = pr.In.Host // the origin check compares it with Origin
		},
		Transport: tr,
	}
	srv := httptest.NewServer(rp)
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { srv.CloseClientConnections(); srv.Close(); tr.CloseIdleConnections() }) })
	return srv.URL
}
