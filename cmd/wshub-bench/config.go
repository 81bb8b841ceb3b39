package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"time"
)

// config is the parsed command line.
type config struct {
	scenario  string
	backplane string
	nodes     int
	conns     int
	msgs      int
	size      int
	rate      float64
	callers   int
	churn     float64
	queue     int
	rawOf     string
	binary    bool
	batch     bool
	drain     time.Duration
	timeout   time.Duration
	perAddr   int
	dialConc  int
	cpuProf   string
	clientCPU string
	users     int           // presence: users online below the sockets
	members   int           // presence: members of the topic below the sockets
	reads     int           // presence: reads of each kind measured
	idle      time.Duration // presence: the idle measurement through the hubs
	heapProf  string
}

func parseFlags(args []string, out io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("wshub-bench", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.scenario, "scenario", "broadcast", "broadcast, send-user, idle, churn, raw or presence")
	fs.StringVar(&c.backplane, "backplane", "memory://", "backplane `URL`: memory:// is one shared bus; others are opened once per node")
	fs.IntVar(&c.nodes, "nodes", 1, "hub nodes in this process")
	fs.IntVar(&c.conns, "conns", 1000, "WebSocket clients")
	fs.IntVar(&c.msgs, "msgs", 1000, "messages to publish")
	fs.IntVar(&c.size, "size", 64, "payload `bytes` (at least 8: the send time)")
	fs.Float64Var(&c.rate, "rate", 0, "messages per second in all; 0 is flat out")
	fs.IntVar(&c.callers, "callers", 16, "send-user: concurrent senders")
	fs.Float64Var(&c.churn, "churn", 100, "churn: connects and disconnects per second")
	fs.IntVar(&c.queue, "queue", 4096, "SendQueueLen of hub sessions")
	fs.StringVar(&c.rawOf, "raw-of", "broadcast", "raw: the scenario to mirror, broadcast or idle")
	fs.BoolVar(&c.binary, "binary", false, "send binary messages (default text)")
	fs.BoolVar(&c.batch, "batch", false, "hub clients use the batched framing (wshub_batch=1); raw ignores it")
	fs.DurationVar(&c.drain, "drain", 10*time.Second, "stop waiting for deliveries after this long without progress")
	fs.DurationVar(&c.timeout, "timeout", 2*time.Minute, "bound on the whole run")
	fs.IntVar(&c.perAddr, "per-addr", 20000, "clients per loopback source address")
	fs.IntVar(&c.dialConc, "dial-conc", 128, "WebSocket handshakes in flight")
	fs.StringVar(&c.cpuProf, "cpuprofile", "", "write a CPU profile of the server process to `file`")
	fs.StringVar(&c.clientCPU, "client-cpuprofile", "", "write a CPU profile of the client process to `file`")
	fs.IntVar(&c.users, "users", 100000, "presence: users online across the nodes, below the sockets")
	fs.IntVar(&c.members, "members", 10000, "presence: members of the topic, below the sockets")
	fs.IntVar(&c.reads, "reads", 1000, "presence: reads of each kind measured")
	fs.DurationVar(&c.idle, "idle", 10*time.Second, "presence: how long the idle traffic of the hubs is measured")
	fs.StringVar(&c.heapProf, "heapprofile", "", "write a heap profile of the server process, clients connected, to `file`")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if err := c.checkWorkload(); err != nil {
		return c, err
	}
	return c, c.checkLimits()
}

// checkWorkload checks what the run does: the scenario, its clients and
// messages.
func (c config) checkWorkload() error {
	_, known := scenarios[c.scenario]
	sends := c.scenario != "idle" && c.scenario != "presence" && !(c.scenario == "raw" && c.rawOf == "idle")
	switch {
	case !known:
		return fmt.Errorf("-scenario %q: want broadcast, send-user, idle, churn, raw or presence", c.scenario)
	case c.rawOf != "broadcast" && c.rawOf != "idle":
		return fmt.Errorf("-raw-of %q: want broadcast or idle", c.rawOf)
	case c.nodes < 1 || c.nodes > 64:
		return fmt.Errorf("-nodes %d: want 1 to 64", c.nodes)
	case c.conns < 1:
		return fmt.Errorf("-conns %d: want at least 1", c.conns)
	case c.scenario == "churn" && c.conns < 2:
		return errors.New("-scenario churn needs -conns 2 or more (half are stable)")
	case sends && c.msgs < 1:
		return fmt.Errorf("-msgs %d: want at least 1", c.msgs)
	case sends && c.size < stampLen:
		return fmt.Errorf("-size %d: want at least %d (the send time)", c.size, stampLen)
	case c.scenario == "presence" && (c.users < 1 || c.members < 1 || c.members > c.users):
		return fmt.Errorf("-users %d -members %d: want at least 1 user and 1 to -users members", c.users, c.members)
	case c.scenario == "presence" && (c.reads < 1 || c.idle <= 0):
		return fmt.Errorf("-reads %d -idle %v: want at least 1 read and a positive idle time", c.reads, c.idle)
	}
	return nil
}

// checkLimits checks the rates, queues, timeouts and dialing limits.
func (c config) checkLimits() error {
	switch {
	case c.rate < 0 || math.IsNaN(c.rate) || math.IsInf(c.rate, 0):
		return fmt.Errorf("-rate %v: want 0 (flat out) or more", c.rate)
	case c.callers < 1:
		return fmt.Errorf("-callers %d: want at least 1", c.callers)
	case c.scenario == "churn" && (c.churn <= 0 || math.IsInf(c.churn, 0) || math.IsNaN(c.churn)):
		return fmt.Errorf("-churn %v: want more than 0", c.churn)
	case c.queue < 1:
		return fmt.Errorf("-queue %d: want at least 1", c.queue)
	case c.drain <= 0 || c.timeout <= 0:
		return errors.New("-drain and -timeout must be positive")
	case c.perAddr < 1 || c.perAddr > 28000:
		return fmt.Errorf("-per-addr %d: want 1 to 28000 (ephemeral ports of one address)", c.perAddr)
	case (c.conns+c.perAddr-1)/c.perAddr > 200:
		return fmt.Errorf("-conns %d needs more than 200 source addresses at -per-addr %d", c.conns, c.perAddr)
	case c.dialConc < 1:
		return fmt.Errorf("-dial-conc %d: want at least 1", c.dialConc)
	}
	return nil
}
