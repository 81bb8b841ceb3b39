package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/wshub/wshub/examples/rooms/internal/stream"
	"github.com/wshub/wshub/internal/browsertest"
	"github.com/wshub/wshub/internal/redistest"
)

// sentFrames records the checksum of every frame a streamer sent, for the
// page's to be checked against.
type sentFrames struct {
	mu   sync.Mutex
	sums map[uint32]uint32
}

// startStreamer streams into room through addrs (failing over in turn) at
// 20 frames a second, as the example does, until the test ends.
func startStreamer(t *testing.T, addrs ...string) *sentFrames {
	t.Helper()
	sent := &sentFrames{sums: make(map[uint32]uint32)}
	s := &stream.Streamer{Addrs: addrs, Room: "demo", FPS: 20, Logger: quiet, OnSend: func(seq, sum uint32) {
		sent.mu.Lock()
		sent.sums[seq] = sum
		sent.mu.Unlock()
	}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return sent
}

// check is the script's "check" action: the page's last frame, seq, has
// the checksum sum (hex) of the frame the streamer sent.
func (s *sentFrames) check(p map[string]string) error {
	seq, err := strconv.ParseUint(p["seq"], 10, 32)
	if err != nil {
		return fmt.Errorf("seq %q: %w", p["seq"], err)
	}
	s.mu.Lock()
	want, ok := s.sums[uint32(seq)]
	s.mu.Unlock()
	switch {
	case !ok:
		return fmt.Errorf("frame %d was never sent", seq)
	case fmt.Sprintf("%08x", want) != p["sum"]:
		return fmt.Errorf("frame %d: the page shows checksum %s, the streamer sent %08x", seq, p["sum"], want)
	}
	return nil
}

// failover is a tiny reverse proxy in front of the instances: each request
// goes to the first one that accepts a connection, as a load balancer that
// takes a dead backend out would do.
func failover(t *testing.T, backends ...*node) string {
	t.Helper()
	tr := &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			var err error
			for _, n := range backends {
				var c net.Conn
				if c, err = d.DialContext(ctx, network, n.srv.Listener.Addr().String()); err == nil {
					return c, nil
				}
			}
			return nil, err
		},
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(&url.URL{Scheme: "http", Host: "rooms"}) // dialled by tr
			pr.Out.Host = pr.In.Host                           // same origin for the hub
		},
		Transport:    tr,
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, _ error) { w.WriteHeader(http.StatusBadGateway) },
	}
	srv := httptest.NewServer(rp)
	t.Cleanup(srv.Close)
	return srv.URL
}

// One instance on the in-memory backplane, as `go run ./examples/rooms`
// runs it: two pages show the stream live, frame for frame as sent.
func TestBrowserMemory(t *testing.T) {
	browsertest.Need(t)
	n := startNode(t, nil, "n1", false)
	sent := startStreamer(t, n.ingest)
	ctl := browsertest.Control(t, map[string]func(map[string]string) error{"check": sent.check})
	browsertest.Run(t, "rooms.mjs", map[string]any{
		"control": ctl, "redis": false,
		"a": n.srv.URL, "b": n.srv.URL, "nodeA": "n1", "nodeB": "n1",
	}, 40*time.Second)
}

// Two instances on a real redis-server: A watches through the reverse
// proxy (on n1), B on n2, the streamer feeds n1's ingest. Redis stops (both
// pages show the outage and the stall) and starts again (frames flow
// again), then n1 is killed: A reconnects through the proxy to n2, the
// streamer fails over to n2's ingest, and both canvases keep updating.
func TestBrowserRedis(t *testing.T) {
	browsertest.Need(t)
	srv := redistest.Start(t)
	n1 := startNode(t, openRedis(t, srv), "n1", true)
	n2 := startNode(t, openRedis(t, srv), "n2", true)
	proxy := failover(t, n1, n2)
	sent := startStreamer(t, n1.ingest, n2.ingest)
	ctl := browsertest.Control(t, map[string]func(map[string]string) error{
		"check":       sent.check,
		"redis-stop":  func(map[string]string) error { srv.Stop(t); return nil },
		"redis-start": func(map[string]string) error { srv.Restart(t); return nil },
		"kill":        func(map[string]string) error { return n1.kill() },
	})
	browsertest.Run(t, "rooms.mjs", map[string]any{
		"control": ctl, "redis": true,
		"a": proxy, "b": n2.srv.URL, "nodeA": "n1", "nodeB": "n2", "failover": "n2",
	}, 60*time.Second)
}
