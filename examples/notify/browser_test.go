package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/internal/browsertest"
	"github.com/wshub/wshub/internal/redistest"
)

// The browser test on the one command's memory bus: a device page on
// instance 1, the admin page on instance 2 (see e2e/notify.mjs).
func TestBrowserMemory(t *testing.T) {
	browsertest.Need(t)
	bases := startRun(t, 2, "-addr", "127.0.0.1:0", "-admin-addr", "127.0.0.1:0", "-drain", "1s")
	browsertest.Run(t, "notify.mjs", map[string]string{
		"mode": "memory", "device": bases["n1"], "admin": bases["n2"], "shots": os.TempDir(),
	}, 45*time.Second)
}

// The browser test on two processes over a real redis-server in Streams
// mode: the device page reaches n1 through a failover proxy (n2 once n1 is
// gone), the admin page is on n2. The script has n1 killed with SIGKILL
// while notifications stream to the device, then Redis killed and
// restarted (see e2e/notify.mjs).
func TestBrowserRedis(t *testing.T) {
	browsertest.Need(t)
	srv := redistest.Start(t)
	// A short presence TTL, so that the record is written again soon
	// after Redis comes back empty.
	bpURL := "redis://" + srv.Addr() + "/0?mode=streams&presence_ttl=1s&prefix=notify-" + strconv.FormatUint(rand.Uint64(), 16) + ":"
	n1 := startNode(t, "n1", bpURL)
	n2 := startNode(t, "n2", bpURL)
	proxy := newFailover(t, n1.addr, n2.addr)
	ctl := browsertest.Control(t, map[string]func(map[string]string) error{
		"kill-n1": func(map[string]string) error { return n1.kill() },
		"redis-kill": func(map[string]string) error {
			srv.Kill(t)
			return nil
		},
		"redis-restart": func(map[string]string) error {
			srv.Restart(t)
			return nil
		},
	})
	browsertest.Run(t, "notify.mjs", map[string]string{
		"mode": "redis", "device": proxy, "admin": "http://" + n2.addr, "control": ctl, "shots": os.TempDir(),
	}, 75*time.Second)
}

// nodeProc is an instance in a process of its own: the test binary with
// childEnv set.
type nodeProc struct {
	id   string
	cmd  *exec.Cmd
	out  *syncBuffer
	addr string
	done chan struct{}
	err  error // how it exited, once done is closed
}

// startNode starts an instance on bpURL and waits until it listens. The
// test's cleanup kills it if it still runs.
func startNode(t *testing.T, id, bpURL string) *nodeProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-addr", "127.0.0.1:0", "-node", id, "-backplane", bpURL, "-drain", "1s")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	p := &nodeProc{id: id, cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	require.NoError(t, cmd.Start())
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.kill()
		if t.Failed() {
			out := p.out.String()
			t.Logf("node %s logs (last 3000 bytes):\n%s", id, out[max(0, len(out)-3000):])
		}
	})
	addr := regexp.MustCompile(`msg="notify listening" addr=(\S+)`)
	require.Eventually(t, func() bool {
		if m := addr.FindStringSubmatch(p.out.String()); m != nil {
			p.addr = m[1]
			return true
		}
		select {
		case <-p.done:
			t.Fatalf("node %s exited (%v) before it listened: %s", id, p.err, p.out)
		default:
		}
		return false
	}, waitFor, 5*time.Millisecond, "node %s did not log its address: %s", id, p.out)
	return p
}

// kill kills the process with SIGKILL, like a crash, and waits for it.
func (p *nodeProc) kill() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	_ = p.cmd.Process.Kill()
	select {
	case <-p.done:
		return nil
	case <-time.After(waitFor):
		return fmt.Errorf("node %s did not exit after SIGKILL", p.id)
	}
}

// newFailover starts a tiny reverse proxy that sends each request (a page,
// an upgrade) to the first of addrs that accepts a connection, keeping the
// Host header for the hub's origin check, and returns its URL.
func newFailover(t *testing.T, addrs ...string) string {
	t.Helper()
	tr := &http.Transport{
		DisableKeepAlives: true, // every request dials: a dead node is skipped at once
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			var err error
			for _, a := range addrs {
				var c net.Conn
				if c, err = d.DialContext(ctx, network, a); err == nil {
					return c, nil
				}
			}
			return nil, err
		},
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(&url.URL{Scheme: "http", Host: "backend"}) // DialContext picks the node
			pr.Out.Host = pr.In.Host
		},
		Transport:    tr,
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, _ error) { w.WriteHeader(http.StatusBadGateway) },
	}
	srv := httptest.NewServer(rp)
	t.Cleanup(func() {
		srv.Close()
		tr.CloseIdleConnections()
	})
	return srv.URL
}
