package main

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/wshub/wshub/internal/browsertest"
	"github.com/wshub/wshub/internal/redistest"
)

// browserTimeout bounds each browser test's script; a healthy run takes a
// few seconds.
const browserTimeout = time.Minute

// The chat in a real browser, on one process with the hub's in-memory
// backplane: two tabs pick names, join a room, talk in it and in private,
// watch its member list, and get "offline" for a direct message to a user
// connected nowhere; a reload keeps a tab's name; at phone width the input
// and its button are on screen. See e2e/chat.mjs.
func TestBrowserMemory(t *testing.T) {
	browsertest.Need(t)
	srv := startChat(t, nil, "n1")
	browsertest.Run(t, "chat.mjs", map[string]string{"mode": "memory", "url": srv.URL}, browserTimeout)
}

// The chat in a real browser on two nodes (processes) on a real Redis in
// Streams mode, behind the balancer of TestRollingRestart, one tab on each
// node. Redis is stopped and started again: both pages show the outage,
// then the restore and that messages may have been missed, and messages
// flow again at once. Then the node of one tab is killed (SIGKILL) while
// the other tab sends: the first tab reconnects, through the balancer, to
// the other node and gets every message sent meanwhile, once, in order.
// See e2e/chat.mjs.
func TestBrowserTwoNodesOnRedis(t *testing.T) {
	browsertest.Need(t)
	rs := redistest.Start(t)
	// A short probe, so that a node notices an outage within a second.
	bpURL := "redis://" + rs.Addr() + "/0?mode=streams&probe_interval=200ms&prefix=browser-" + randomHex() + ":"
	lb := newBalancer(t, 2)
	nodes := map[string]*nodeProc{}
	for i, id := range []string{"a1", "b1"} {
		nodes[id] = startNode(t, id, bpURL)
		lb.set(i, nodes[id].addr)
	}
	lb.waitReady(t, 0, true)
	lb.waitReady(t, 1, true)

	// The actions run on the control server's goroutines: they return
	// errors rather than fail t, except redistest's, which only fail when
	// redis-server itself does.
	control := browsertest.Control(t, map[string]func(map[string]string) error{
		"kill": func(p map[string]string) error {
			n := nodes[p["node"]]
			if n == nil {
				return fmt.Errorf("no node %q", p["node"])
			}
			if err := n.cmd.Process.Signal(syscall.SIGKILL); err != nil {
				return err
			}
			select {
			case <-n.done:
				return nil
			case <-time.After(stopTimeout):
				return fmt.Errorf("node %s did not exit", n.id)
			}
		},
		"redis-stop":  func(map[string]string) error { rs.Stop(t); return nil },
		"redis-start": func(map[string]string) error { rs.Restart(t); return nil },
	})
	browsertest.Run(t, "chat.mjs", map[string]string{"mode": "redis", "url": lb.url, "control": control}, browserTimeout)
}
