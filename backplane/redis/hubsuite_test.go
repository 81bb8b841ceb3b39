package redis_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	goredis "github.com/redis/go-redis/v9"

	"github.com/wshub/wshub/backplane"
	wsredis "github.com/wshub/wshub/backplane/redis"
	"github.com/wshub/wshub/internal/redistest"
	"github.com/wshub/wshub/wshubtest"
)

// The hub-level cluster suite on every Redis setup. Every case has a key
// prefix of its own; on a single server each node reaches Redis through a
// proxy of its own, which is how the suite cuts a node off.

func TestHubMiniredis(t *testing.T) {
	wshubtest.RunHub(t, func(_ context.Context, t *testing.T) (wshubtest.Harness, error) {
		mr := miniredis.RunT(t)
		return newHubHarness(t, false, mr.Addr()), nil
	}, wshubtest.Features{Presence: true, PresenceTTL: hubPresenceTTL})
}

func TestHubRedis(t *testing.T) {
	srv := redistest.Start(t)
	wshubtest.RunHub(t, func(_ context.Context, t *testing.T) (wshubtest.Harness, error) {
		return newHubHarness(t, false, srv.Addr()), nil
	}, wshubtest.Features{Presence: true, PresenceTTL: hubPresenceTTL})
}

func TestHubRedisStreams(t *testing.T) {
	srv := redistest.Start(t)
	wshubtest.RunHub(t, func(_ context.Context, t *testing.T) (wshubtest.Harness, error) {
		return newHubHarness(t, true, srv.Addr()), nil
	}, wshubtest.Features{CatchUp: true, Presence: true, PresenceTTL: hubPresenceTTL})
}

// TestHubRedisCluster has no faults: a cluster client follows the
// cluster's own addresses, past any proxy.
func TestHubRedisCluster(t *testing.T) {
	rc := redistest.StartCluster(t, 3)
	wshubtest.RunHub(t, func(_ context.Context, t *testing.T) (wshubtest.Harness, error) {
		h := newHubHarness(t, false, "")
		h.cluster = rc.Addrs()
		return clusterHarness{h}, nil
	}, wshubtest.Features{Presence: true, PresenceTTL: hubPresenceTTL})
}

// hubPresenceTTL is the presence time to live of the suite's nodes: short,
// so that a cut node's sessions expire quickly.
const hubPresenceTTL = time.Second

// newHubBackplane makes one node's backplane: the one place that knows
// how this package's constructors are called.
func newHubBackplane(client goredis.UniversalClient, prefix string, streams bool) (backplane.Backplane, error) {
	o := wsredis.Options{Prefix: prefix, Logger: quiet, PresenceTTL: hubPresenceTTL}
	if streams {
		return wsredis.NewStreams(client, &wsredis.StreamsOptions{Options: o})
	}
	return wsredis.NewPubSub(client, &o)
}

// hubHarness makes the backplanes of one case: one client each, under one
// prefix, through a proxy per node on a single server. It implements
// wshubtest.Faults by cutting a node's proxy.
type hubHarness struct {
	t       *testing.T
	addr    string   // a single server
	cluster []string // or a Redis Cluster
	streams bool
	prefix  string

	mu      sync.Mutex
	proxies map[string]*redistest.Proxy
	clients []goredis.UniversalClient
}

func newHubHarness(t *testing.T, streams bool, addr string) *hubHarness {
	return &hubHarness{t: t, addr: addr, streams: streams, prefix: "hub-" + randomHex() + ":",
		proxies: make(map[string]*redistest.Proxy)}
}

func (h *hubHarness) NewBackplane(_ context.Context, nodeID string) (backplane.Backplane, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var c goredis.UniversalClient
	if h.cluster != nil {
		c = goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: h.cluster})
	} else {
		p := redistest.NewProxy(h.t, h.addr)
		h.proxies[nodeID] = p
		c = goredis.NewClient(&goredis.Options{Addr: p.Addr()})
	}
	h.clients = append(h.clients, c)
	return newHubBackplane(c, h.prefix, h.streams)
}

func (h *hubHarness) proxy(nodeID string) (*redistest.Proxy, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	p := h.proxies[nodeID]
	if p == nil {
		return nil, fmt.Errorf("no node %q", nodeID)
	}
	return p, nil
}

func (h *hubHarness) Cut(nodeID string) error {
	p, err := h.proxy(nodeID)
	if err == nil {
		p.Cut()
	}
	return err
}

func (h *hubHarness) Heal(nodeID string) error {
	p, err := h.proxy(nodeID)
	if err == nil {
		p.Heal()
	}
	return err
}

func (h *hubHarness) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range h.clients {
		_ = c.Close()
	}
}

// clusterHarness is a hubHarness without Faults.
type clusterHarness struct{ h *hubHarness }

func (c clusterHarness) NewBackplane(ctx context.Context, nodeID string) (backplane.Backplane, error) {
	return c.h.NewBackplane(ctx, nodeID)
}

func (c clusterHarness) Close() { c.h.Close() }
