package redistest

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// numSlots is the number of hash slots of a Redis Cluster.
const numSlots = 16384

// Cluster is a Redis Cluster of masters on 127.0.0.1 that the test's
// cleanup stops.
type Cluster struct {
	servers []*Server
}

// StartCluster starts n (>= 1) cluster-enabled masters (--cluster-enabled
// yes --cluster-config-file nodes.conf --cluster-node-timeout 2000, each in
// its own dir, on a port whose bus port, port+10000, is free too), assigns
// the 16384 slots evenly with CLUSTER ADDSLOTSRANGE, joins them with CLUSTER
// MEET, and waits until every node reports cluster_state:ok and knows all n
// masters (CLUSTER INFO / CLUSTER NODES). opts apply to every node as in
// Start. The cleanup stops all nodes. StartCluster skips tb when
// redis-server is not installed (see Binary).
func StartCluster(tb testing.TB, n int, opts ...Option) *Cluster {
	tb.Helper()
	if n < 1 {
		tb.Fatalf("redistest: StartCluster needs at least 1 node, got %d", n)
	}
	cfg := newConfig(opts)
	cfg.cluster = true
	c := &Cluster{servers: make([]*Server, n)}
	for i := range c.servers {
		c.servers[i] = start(tb, cfg)
	}
	for i, s := range c.servers {
		lo, hi := i*numSlots/n, (i+1)*numSlots/n-1
		if _, err := do(s.Addr(), readyTimeout, "CLUSTER", "ADDSLOTSRANGE", strconv.Itoa(lo), strconv.Itoa(hi)); err != nil {
			tb.Fatalf("redistest: CLUSTER ADDSLOTSRANGE %d %d on %s: %v", lo, hi, s.Addr(), err)
		}
	}
	first := c.servers[0]
	for _, s := range c.servers[1:] {
		if _, err := do(first.Addr(), readyTimeout, "CLUSTER", "MEET", "127.0.0.1", strconv.Itoa(s.port)); err != nil {
			tb.Fatalf("redistest: CLUSTER MEET %s from %s: %v", s.Addr(), first.Addr(), err)
		}
	}
	if err := c.waitReady(clusterTimeout); err != nil {
		tb.Fatal(err)
	}
	return c
}

// Addrs returns the addresses of the nodes, "127.0.0.1:port" each.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.servers))
	for i, s := range c.servers {
		addrs[i] = s.Addr()
	}
	return addrs
}

// Client returns a go-redis cluster client seeded with every node, closed
// in tb's cleanup.
func (c *Cluster) Client(tb testing.TB) *redis.ClusterClient {
	tb.Helper()
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	tb.Cleanup(func() { _ = cc.Close() })
	return cc
}

// Servers returns the nodes, in the order of Addrs, to kill or restart one.
func (c *Cluster) Servers() []*Server {
	return slices.Clone(c.servers)
}

// waitReady waits until every node reports cluster_state:ok and knows every
// node as a connected master at its address.
func (c *Cluster) waitReady(timeout time.Duration) error {
	want := c.Addrs()
	deadline := time.Now().Add(timeout)
	for {
		var notReady error
		for _, s := range c.servers {
			if err := nodeReady(s.Addr(), want); err != nil {
				notReady = fmt.Errorf("node %s: %w", s.Addr(), err)
				break
			}
		}
		if notReady == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redistest: cluster of %d nodes %v not ready (cluster_state:ok and all masters known) within %v: %v",
				len(c.servers), want, timeout, notReady)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// nodeReady checks that the node at addr reports cluster_state:ok and knows
// exactly the masters want, all connected.
func nodeReady(addr string, want []string) error {
	info, err := do(addr, pingTimeout, "CLUSTER", "INFO")
	if err != nil {
		return fmt.Errorf("CLUSTER INFO: %w", err)
	}
	if !strings.Contains(info, "cluster_state:ok") {
		return fmt.Errorf("CLUSTER INFO does not report cluster_state:ok")
	}
	nodes, err := do(addr, pingTimeout, "CLUSTER", "NODES")
	if err != nil {
		return fmt.Errorf("CLUSTER NODES: %w", err)
	}
	var masters []string
	for _, line := range strings.Split(strings.TrimSpace(nodes), "\n") {
		// <id> <ip:port@cport[,hostname]> <flags> <master> <ping-sent>
		// <pong-recv> <config-epoch> <link-state> <slot>...
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		flags := strings.Split(f[2], ",")
		if !slices.Contains(flags, "master") {
			continue
		}
		for _, bad := range []string{"fail", "fail?", "handshake", "noaddr"} {
			if slices.Contains(flags, bad) {
				return fmt.Errorf("CLUSTER NODES shows master %s as %s", f[1], bad)
			}
		}
		if f[7] != "connected" {
			return fmt.Errorf("CLUSTER NODES shows master %s %s", f[1], f[7])
		}
		nodeAddr, _, _ := strings.Cut(f[1], "@")
		masters = append(masters, nodeAddr)
	}
	slices.Sort(masters)
	sorted := slices.Sorted(slices.Values(want))
	if !slices.Equal(masters, sorted) {
		return fmt.Errorf("CLUSTER NODES knows masters %v, want %v", masters, sorted)
	}
	return nil
}
