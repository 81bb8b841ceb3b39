// Command wshub-bench is the load tool of wshub. It starts K hub nodes in
// this process on one backplane, each behind its own HTTP server on
// 127.0.0.1, and drives N real WebSocket clients from a separate client
// process (this binary, re-executed), so that the server's memory and
// goroutines are measured alone. Each run prints exactly one JSON line on
// stdout; progress and diagnostics go to stderr.
//
// Usage:
//
//	wshub-bench [flags]
//
//	-scenario NAME   broadcast (default), send-user, idle, churn or raw
//	-backplane URL   memory:// (default: one shared memory.Bus, a node per hub)
//	                 or any URL backplane.Open takes (one Open per hub)
//	-nodes K         hub nodes (default 1); clients are spread round-robin
//	-conns N         WebSocket clients (default 1000)
//	-msgs M          messages to publish (default 1000)
//	-size BYTES      payload size, at least 8 (default 64)
//	-rate R          messages per second in all; 0 is flat out (default 0)
//	-callers C       concurrent senders for send-user (default 16)
//	-churn C         churn: connects (and disconnects) per second (default 100)
//	-queue Q         hub sessions' SendQueueLen (default 4096)
//	-raw-of NAME     raw: mirror broadcast (default) or idle
//	-binary          send binary messages instead of text
//	-batch           hub clients ask for the batched framing (wshub_batch=1) and
//	                 count each record of a WebSocket message as a delivery;
//	                 raw ignores it (raw is the ceiling without batching)
//	-drain D         stop waiting for deliveries after D without progress (default 10s)
//	-timeout D       the whole run, processes included, ends within D (default 2m)
//	-per-addr N      clients per loopback source address 127.0.0.x (default 20000)
//	-dial-conc N     handshakes in flight (default 128)
//	-cpuprofile F    CPU profile of the server process
//	-client-cpuprofile F  CPU profile of the client process
//
// The client process is this binary run as "wshub-bench -role clients": it
// reads JSON requests on stdin and answers each with one JSON line on stdout
// (see wire.go). It exits when told to, when its stdin closes, and by itself
// after the parent's -timeout; the parent kills it at the deadline.
//
// Diagnostics on stderr include, for the traffic phase, the CPU time of the
// server and the client process: on a small machine both share the cores,
// and the client process costs about as much as the server.
//
// Scenarios:
//
//   - broadcast: every client joins one topic in OnConnect; node 1
//     broadcasts M messages to it. lost = M*N - delivered.
//   - send-user: every client is a distinct user; node 1 sends M messages to
//     random users from -callers goroutines. lost = M - delivered.
//   - idle: N clients connect, nothing is sent; the line's memory and
//     goroutine figures are the point.
//   - churn: half the clients stay connected all along; the other half are
//     slots that connect and disconnect at -churn per second, leave and rejoin
//     the topic while connected (half through Session.Leave/Join, half through
//     the cluster-wide Hub.Leave/Join), while node 1 broadcasts at -rate
//     (-rate 0 means M/10 per second here). delivered and lost count the
//     stable clients only; churners' deliveries go to stderr.
//   - raw: the same clients and messages served by a bare coder/websocket
//     handler with no hub, as a ceiling for broadcast or idle (-raw-of). Its
//     scenario field reads raw-broadcast or raw-idle, backplane "none".
//
// The JSON line has scenario, backplane, nodes, conns, msgs, size, batch
// (whether the clients used the batched framing: -batch, and never for raw),
// delivered, lost, deliveries_per_s (delivered over the time from the first send to the
// last arrival), p50_ms, p99_ms, max_ms (send to arrival: each payload starts
// with its send time, see stampLen), server_bytes_per_conn (HeapInuse +
// StackInuse after runtime.GC with the clients connected, minus the same
// before they connected, over the clients) and goroutines_per_conn (the
// same with runtime.NumGoroutine). Both are measured in every scenario, with
// the clients connected and before any traffic.
//
// With -batch, a delivery is a record, not a WebSocket message: the client
// reads each message whole into a buffer it reuses (growing it when a
// message is larger), splits it into its records and takes each record's
// latency from the stamp at the start of that record's payload, against the
// arrival of the message that carried it. The drain diagnostics on stderr
// give the number of WebSocket messages, hence records per message.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"

	"github.com/wshub/wshub"
)

func main() {
	if args, ok := childInvocation(os.Args[1:]); ok {
		os.Exit(childMain(args, os.Stdin, os.Stdout, os.Stderr))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case errors.Is(err, flag.ErrHelp):
	case err != nil:
		fmt.Fprintln(os.Stderr, "wshub-bench:", err)
		os.Exit(1)
	}
}

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
}

func parseFlags(args []string, out io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("wshub-bench", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.scenario, "scenario", "broadcast", "broadcast, send-user, idle, churn or raw")
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
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	sends := c.scenario != "idle" && !(c.scenario == "raw" && c.rawOf == "idle")
	switch {
	case c.scenario != "broadcast" && c.scenario != "send-user" && c.scenario != "idle" &&
		c.scenario != "churn" && c.scenario != "raw":
		return c, fmt.Errorf("-scenario %q: want broadcast, send-user, idle, churn or raw", c.scenario)
	case c.rawOf != "broadcast" && c.rawOf != "idle":
		return c, fmt.Errorf("-raw-of %q: want broadcast or idle", c.rawOf)
	case c.nodes < 1 || c.nodes > 64:
		return c, fmt.Errorf("-nodes %d: want 1 to 64", c.nodes)
	case c.conns < 1:
		return c, fmt.Errorf("-conns %d: want at least 1", c.conns)
	case c.scenario == "churn" && c.conns < 2:
		return c, errors.New("-scenario churn needs -conns 2 or more (half are stable)")
	case sends && c.msgs < 1:
		return c, fmt.Errorf("-msgs %d: want at least 1", c.msgs)
	case sends && c.size < stampLen:
		return c, fmt.Errorf("-size %d: want at least %d (the send time)", c.size, stampLen)
	case c.rate < 0 || math.IsNaN(c.rate) || math.IsInf(c.rate, 0):
		return c, fmt.Errorf("-rate %v: want 0 (flat out) or more", c.rate)
	case c.callers < 1:
		return c, fmt.Errorf("-callers %d: want at least 1", c.callers)
	case c.scenario == "churn" && (c.churn <= 0 || math.IsInf(c.churn, 0) || math.IsNaN(c.churn)):
		return c, fmt.Errorf("-churn %v: want more than 0", c.churn)
	case c.queue < 1:
		return c, fmt.Errorf("-queue %d: want at least 1", c.queue)
	case c.drain <= 0 || c.timeout <= 0:
		return c, errors.New("-drain and -timeout must be positive")
	case c.perAddr < 1 || c.perAddr > 28000:
		return c, fmt.Errorf("-per-addr %d: want 1 to 28000 (ephemeral ports of one address)", c.perAddr)
	case (c.conns+c.perAddr-1)/c.perAddr > 200:
		return c, fmt.Errorf("-conns %d needs more than 200 source addresses at -per-addr %d", c.conns, c.perAddr)
	case c.dialConc < 1:
		return c, fmt.Errorf("-dial-conc %d: want at least 1", c.dialConc)
	}
	return c, nil
}

// result is the JSON line of a run.
type result struct {
	Scenario           string  `json:"scenario"`
	Backplane          string  `json:"backplane"`
	Nodes              int     `json:"nodes"`
	Conns              int     `json:"conns"`
	Msgs               int     `json:"msgs"`
	Size               int     `json:"size"`
	Batch              bool    `json:"batch"`
	Delivered          int64   `json:"delivered"`
	Lost               int64   `json:"lost"`
	DeliveriesPerS     float64 `json:"deliveries_per_s"`
	P50Ms              float64 `json:"p50_ms"`
	P99Ms              float64 `json:"p99_ms"`
	MaxMs              float64 `json:"max_ms"`
	ServerBytesPerConn int64   `json:"server_bytes_per_conn"`
	GoroutinesPerConn  float64 `json:"goroutines_per_conn"`
}

// run parses args, runs one scenario within -timeout and writes its JSON
// line to stdout. Every process and goroutine it started has ended when it
// returns.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	stderr = &lockedWriter{w: stderr}
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	raiseNofile(stderr)
	if cfg.cpuProf != "" {
		stop, err := startCPUProfile(cfg.cpuProf)
		if err != nil {
			return err
		}
		defer stop()
	}
	if lim := nofileLimit(); lim != 0 && uint64(cfg.conns)+64 > lim {
		fmt.Fprintf(stderr, "wshub-bench: warning: %d connections and an open-files limit of %d\n", cfg.conns, lim)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	var tag [4]byte
	for i := range tag {
		tag[i] = "abcdefghijklmnopqrstuvwxyz"[rand.IntN(26)]
	}
	b := &bench{cfg: cfg, log: stderr, tag: "b" + string(tag[:]), epoch: time.Now()}
	b.hubLog = &countingHandler{Handler: slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})}
	res, err := b.run(ctx)
	if err != nil {
		return err
	}
	line, err := json.Marshal(res)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s\n", line)
	return err
}

// bench is one run.
type bench struct {
	cfg    config
	log    io.Writer
	hubLog *countingHandler
	tag    string    // makes node IDs, users and the topic unique to the run
	epoch  time.Time // payload stamps count from here
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.log, "wshub-bench: "+format+"\n", args...)
}

func (b *bench) topic() string { return b.tag + "-topic" }

func (b *bench) userPrefix() string { return b.tag + "-u" }

func (b *bench) msgType() websocket.MessageType {
	if b.cfg.binary {
		return websocket.MessageBinary
	}
	return websocket.MessageText
}

// mode is the traffic of the run: what the scenario does once the clients
// are connected.
func (b *bench) mode() string {
	if b.cfg.scenario == "raw" {
		return b.cfg.rawOf
	}
	return b.cfg.scenario
}

func (b *bench) run(ctx context.Context) (res result, err error) {
	cfg := b.cfg
	// The work must end early enough to leave time to shut down within the
	// deadline: the client process is killed at the deadline.
	deadline, _ := ctx.Deadline()
	reserve := min(15*time.Second, cfg.timeout/4)
	work, cancel := context.WithDeadline(ctx, deadline.Add(-reserve))
	defer cancel()

	res = result{
		Scenario:  cfg.scenario,
		Backplane: redactURL(cfg.backplane),
		Nodes:     cfg.nodes,
		Conns:     cfg.conns,
		Msgs:      cfg.msgs,
		Size:      cfg.size,
		Batch:     cfg.batch && cfg.scenario != "raw",
	}
	if b.mode() == "idle" {
		res.Msgs, res.Size = 0, 0
	}

	var (
		srv  server
		hubs *hubCluster
		raw  *rawServer
	)
	if cfg.scenario == "raw" {
		res.Scenario, res.Backplane, res.Nodes = "raw-"+cfg.rawOf, "none", 1
		if cfg.batch {
			b.logf("raw ignores -batch: it is the ceiling without batching")
		}
		raw, err = startRaw(b.msgType(), slog.New(b.hubLog))
		srv = raw
	} else {
		hubs, err = startHubs(work, hubConfig{
			backplaneURL: cfg.backplane,
			nodes:        cfg.nodes,
			tag:          b.tag,
			topic:        b.topic(),
			queue:        cfg.queue,
			maxMsg:       cfg.size,
			log:          slog.New(b.hubLog),
		})
		srv = hubs
	}
	if err != nil {
		return res, err
	}
	defer func() {
		// Shut down gracefully even after an interrupt, within the deadline.
		tctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), deadline)
		defer cancel()
		if cerr := srv.close(tctx); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close servers: %w", cerr))
		}
	}()

	// The client process is killed at the deadline, or at once on an
	// interrupt.
	child, err := startChild(ctx, time.Until(deadline)+5*time.Second, cfg.clientCPU, b.log)
	if err != nil {
		return res, err
	}
	defer func() {
		if serr := child.stop(); serr != nil {
			err = errors.Join(err, serr)
		}
	}()

	// Connect the clients that stay, and measure what they cost the server.
	stable := cfg.conns
	if b.mode() == "churn" {
		stable = cfg.conns - cfg.conns/2
	}
	bufSize := min(max(cfg.size, 64), 16<<10)
	mem0, gor0 := serverMemory()
	last, err := child.call(request{
		Op: opConnect, URLs: srv.urls(), N: stable, Prefix: b.userPrefix(),
		PerAddr: cfg.perAddr, DialConc: cfg.dialConc, Epoch: b.epoch.UnixNano(), BufSize: bufSize,
		Batch: res.Batch,
	})
	if err != nil {
		return res, err
	}
	if err := waitConns(work, srv, stable); err != nil {
		return res, err
	}
	time.Sleep(100 * time.Millisecond) // let the handshakes' leftovers settle
	mem1, gor1 := serverMemory()
	res.ServerBytesPerConn = (int64(mem1) - int64(mem0)) / int64(stable)
	res.GoroutinesPerConn = round(float64(gor1-gor0)/float64(stable), 3)
	b.logf("%d clients connected in %v; server memory %d -> %d bytes, goroutines %d -> %d",
		last.Connected, time.Duration(last.DialNS).Round(time.Millisecond), mem0, mem1, gor0, gor1)

	var (
		send   func(ctx context.Context, p []byte) error
		expect int64
		rate   = cfg.rate
		slots  = cfg.conns - stable
	)
	typ := wshub.MessageType(b.msgType())
	switch {
	case b.mode() == "idle":
		srv.describe(b.log)
		return res, nil
	case cfg.scenario == "raw":
		send = raw.broadcast
		expect = int64(cfg.msgs) * int64(stable)
	case cfg.scenario == "send-user":
		hub, prefix, n := hubs.hubs[0], b.userPrefix(), cfg.conns
		send = func(ctx context.Context, p []byte) error {
			return hub.Send(ctx, prefix+strconv.Itoa(rand.IntN(n)), wshub.Message{Type: typ, Data: p})
		}
		expect = int64(cfg.msgs)
	default: // broadcast, churn
		hub, topic := hubs.hubs[0], b.topic()
		send = func(ctx context.Context, p []byte) error {
			return hub.Broadcast(ctx, topic, wshub.Message{Type: typ, Data: p})
		}
		expect = int64(cfg.msgs) * int64(stable)
	}

	if b.mode() == "churn" {
		if rate == 0 {
			rate = max(1, float64(cfg.msgs)/10)
			b.logf("churn: -rate 0 means %g msgs/s here, so that the traffic lasts about 10s", rate)
		}
		life := time.Duration(float64(slots) / cfg.churn * float64(time.Second))
		life = min(max(life, 20*time.Millisecond), 30*time.Second)
		last, err = child.call(request{
			Op: opChurnStart, URLs: srv.urls(), N: slots, Prefix: b.tag + "-c",
			PerAddr: cfg.perAddr, AddrBase: (stable + cfg.perAddr - 1) / cfg.perAddr,
			Rate: cfg.churn, LifeNS: int64(life), Epoch: b.epoch.UnixNano(), BufSize: bufSize,
			Batch: res.Batch,
		})
		if err != nil {
			return res, err
		}
		b.logf("churn: %d slots at %g connects/s, mean life %v", slots, cfg.churn, life)
	}

	callers := 1
	if cfg.scenario == "send-user" {
		callers = cfg.callers
	}
	cpu0, clientCPU0 := cpuTime(), last.CPUNS
	pub := b.publish(work, cfg.msgs, rate, callers, send)
	b.logf("published %d of %d messages in %v (%.0f/s), %d failed%s",
		pub.sent, cfg.msgs, pub.elapsed.Round(time.Millisecond),
		float64(pub.sent)/max(pub.elapsed.Seconds(), 1e-9), pub.failed, pub.firstErr)

	dl, _ := work.Deadline()
	dr, err := child.call(request{Op: opDrain, Expect: expect, QuietNS: int64(cfg.drain), DeadlineNS: dl.UnixNano()})
	if err != nil {
		return res, err
	}
	b.logf("drain: %d of %d delivered after %v more; %d messages without a stamp; %d clients closed by the server",
		dr.Delivered, expect, time.Duration(dr.WaitedNS).Round(time.Millisecond), dr.Bad, dr.ServerClosed)
	if res.Batch {
		b.logf("batch: %d records in %d WebSocket messages (%.2f records per message)",
			dr.Delivered, dr.Frames, float64(dr.Delivered)/max(float64(dr.Frames), 1))
	}
	wall := time.Since(pub.start)
	srvCPU, cliCPU := cpuTime()-cpu0, time.Duration(dr.CPUNS-clientCPU0)
	b.logf("traffic phase %v: server process cpu %v (%.0f%% of one core), client process cpu %v (%.0f%%)",
		wall.Round(time.Millisecond), srvCPU.Round(time.Millisecond), 100*srvCPU.Seconds()/wall.Seconds(),
		cliCPU.Round(time.Millisecond), 100*cliCPU.Seconds()/wall.Seconds())
	if b.mode() == "churn" {
		st, err := child.call(request{Op: opChurnStop})
		if err != nil {
			return res, err
		}
		b.logf("churn: %d connects, %d disconnects, %d errors%s, %d connects skipped (too many alive); churners received %d messages",
			st.Connects, st.Disconnects, st.Errors, prefixed(st.FirstError), st.Skipped, dr.ChurnDelivered)
	}
	srv.describe(b.log)
	b.logf("hub log records at error level (panics included): %d", b.hubLog.errors.Load())

	res.Delivered = dr.Delivered
	res.Lost = expect - dr.Delivered
	if span := time.Duration(dr.LastNS - pub.start.Sub(b.epoch).Nanoseconds()); span > 0 && dr.Delivered > 0 {
		res.DeliveriesPerS = math.Round(float64(dr.Delivered) / span.Seconds())
	}
	res.P50Ms, res.P99Ms, res.MaxMs = ms(dr.P50NS), ms(dr.P99NS), ms(dr.MaxNS)
	if err := work.Err(); err != nil {
		return res, fmt.Errorf("-timeout %v reached (the last %v are kept for shutting down): %w", cfg.timeout, reserve, err)
	}
	return res, nil
}

type pubStats struct {
	start    time.Time
	elapsed  time.Duration
	sent     int64
	failed   int64
	firstErr string
}

// publish calls send for n payloads of the configured size, each stamped
// with its send time (at a fixed rate, the time it was due), from callers
// goroutines, at rate messages per second in all or flat out. A payload is never reused: the hub keeps it.
func (b *bench) publish(ctx context.Context, n int, rate float64, callers int, send func(context.Context, []byte) error) pubStats {
	var (
		next, sent, failed atomic.Int64
		firstErr           atomic.Pointer[error]
		wg                 sync.WaitGroup
	)
	epoch := b.epoch
	start := time.Now()
	for c := 0; c < callers; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			alloc := payloads{size: b.cfg.size}
			for ctx.Err() == nil {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				stamp := time.Since(epoch)
				if rate > 0 {
					due := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
					if !sleepUntil(ctx, due) {
						return
					}
					// At a fixed rate, latency counts from when the message
					// was due, not from when a server that fell behind got
					// round to sending it: otherwise a sender that blocks
					// (raw) hides its backlog (coordinated omission).
					stamp = due.Sub(epoch)
				}
				p := alloc.next()
				putStamp(p, stamp.Nanoseconds())
				if err := send(ctx, p); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, &err)
					continue
				}
				sent.Add(1)
			}
		}()
	}
	wg.Wait()
	st := pubStats{start: start, elapsed: time.Since(start), sent: sent.Load(), failed: failed.Load()}
	if p := firstErr.Load(); p != nil {
		st.firstErr = "; first error: " + (*p).Error()
	}
	return st
}

func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		_ = f.Close()
	}, nil
}

// payloads carves payloads out of 1 MiB blocks, so that publishing does not
// allocate per message.
type payloads struct {
	size int
	buf  []byte
}

func (p *payloads) next() []byte {
	if len(p.buf) < p.size {
		p.buf = make([]byte, max(p.size, (1<<20)/p.size*p.size))
		for i := range p.buf {
			p.buf[i] = padByte
		}
	}
	b := p.buf[:p.size:p.size]
	p.buf = p.buf[p.size:]
	return b
}

func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// waitConns waits until the server holds n connections.
func waitConns(ctx context.Context, srv server, n int) error {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for srv.conns() < n {
		select {
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("server holds %d of %d connections: %w", srv.conns(), n, ctx.Err())
		}
	}
	return nil
}

// serverMemory returns the heap and stack in use after a full collection,
// and the number of goroutines.
func serverMemory() (uint64, int) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse + ms.StackInuse, runtime.NumGoroutine()
}

func ms(ns int64) float64 { return round(float64(ns)/1e6, 3) }

func round(v float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(v*p) / p
}

func prefixed(s string) string {
	if s == "" {
		return ""
	}
	return " (first: " + s + ")"
}

// redactURL hides a password in a backplane URL.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable url)"
	}
	if _, has := u.User.Password(); !has {
		return s
	}
	return u.Redacted()
}

// lockedWriter serializes writes to the diagnostics stream.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// countingHandler counts the hub's log records at error level: a panic in a
// hook is one.
type countingHandler struct {
	slog.Handler
	errors atomic.Int64
}

func (h *countingHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError {
		h.errors.Add(1)
	}
	return h.Handler.Handle(ctx, r)
}

// WithAttrs and WithGroup keep the count shared with derived handlers (the
// hub logs through Logger.With).
func (h *countingHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &derivedHandler{Handler: h.Handler.WithAttrs(attrs), root: h}
}

func (h *countingHandler) WithGroup(name string) slog.Handler {
	return &derivedHandler{Handler: h.Handler.WithGroup(name), root: h}
}

type derivedHandler struct {
	slog.Handler
	root *countingHandler
}

func (h *derivedHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError {
		h.root.errors.Add(1)
	}
	return h.Handler.Handle(ctx, r)
}

func (h *derivedHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &derivedHandler{Handler: h.Handler.WithAttrs(attrs), root: h.root}
}

func (h *derivedHandler) WithGroup(name string) slog.Handler {
	return &derivedHandler{Handler: h.Handler.WithGroup(name), root: h.root}
}
