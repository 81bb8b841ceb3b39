package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/coder/websocket"
)

// env is one run: its configuration and diagnostics, and the server and
// client process its scenario starts.
type env struct {
	cfg    config
	log    io.Writer
	hubLog *countingHandler
	tag    string    // makes node IDs, users and the topic unique to the run
	epoch  time.Time // payload stamps count from here

	ctx      context.Context // the whole run: the client process dies with it
	deadline time.Time       // ctx's
	reserve  time.Duration   // the end of ctx, kept for shutting down

	res       result     // the JSON line, filled in as the run goes
	srv       server     // set by start
	child     *childProc // set by start
	clientCPU int64      // the client process's CPU time at its latest reply, ns
}

func newEnv(cfg config, stderr io.Writer) *env {
	var tag [4]byte
	for i := range tag {
		tag[i] = "abcdefghijklmnopqrstuvwxyz"[rand.IntN(26)]
	}
	return &env{
		cfg:    cfg,
		log:    stderr,
		hubLog: newCountingHandler(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		tag:    "b" + string(tag[:]),
		epoch:  time.Now(),
		res:    newResult(cfg),
	}
}

// run runs the scenario of -scenario, and then closes what it started. The
// scenario's work must end early enough to leave time to shut down within
// ctx's deadline: the client process is killed at the deadline.
func (e *env) run(ctx context.Context) (res result, err error) {
	e.ctx = ctx
	e.deadline, _ = ctx.Deadline()
	e.reserve = min(15*time.Second, e.cfg.timeout/4)
	work, cancel := context.WithDeadline(ctx, e.deadline.Add(-e.reserve))
	defer cancel()
	defer func() { err = errors.Join(err, e.close()) }()
	return scenarios[e.cfg.scenario](work, e)
}

// close stops the client process, then shuts the server down gracefully,
// even after an interrupt, within the deadline.
func (e *env) close() error {
	var err error
	if e.child != nil {
		err = e.child.stop()
	}
	if e.srv != nil {
		ctx, cancel := context.WithDeadline(context.WithoutCancel(e.ctx), e.deadline)
		defer cancel()
		if cerr := e.srv.close(ctx); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close servers: %w", cerr))
		}
	}
	return err
}

func (e *env) logf(format string, args ...any) {
	fmt.Fprintf(e.log, "wshub-bench: "+format+"\n", args...)
}

func (e *env) topic() string { return e.tag + "-topic" }

func (e *env) userPrefix() string { return e.tag + "-u" }

func (e *env) msgType() websocket.MessageType {
	if e.cfg.binary {
		return websocket.MessageBinary
	}
	return websocket.MessageText
}

// setUpHubs starts -nodes hubs on -backplane and the client process, and
// connects stable clients to the hubs.
func (e *env) setUpHubs(ctx context.Context, stable int) (*hubCluster, error) {
	hubs, err := startHubs(ctx, hubConfig{
		backplaneURL: e.cfg.backplane,
		nodes:        e.cfg.nodes,
		tag:          e.tag,
		topic:        e.topic(),
		queue:        e.cfg.queue,
		maxMsg:       e.cfg.size,
		log:          slog.New(e.hubLog),
	})
	if err != nil {
		return nil, err
	}
	return hubs, e.start(ctx, hubs, stable)
}

// setUpRaw starts the bare websocket server and the client process, and
// connects stable clients to the server.
func (e *env) setUpRaw(ctx context.Context, stable int) (*rawServer, error) {
	raw, err := startRaw(e.msgType(), slog.New(e.hubLog))
	if err != nil {
		return nil, err
	}
	return raw, e.start(ctx, raw, stable)
}

// start makes srv the server of the run, for close to shut down, starts the
// client process, which is killed at the deadline or at once on an
// interrupt, and connects stable clients.
func (e *env) start(ctx context.Context, srv server, stable int) error {
	e.srv = srv
	child, err := startChild(e.ctx, time.Until(e.deadline)+5*time.Second, e.cfg.clientCPU, e.log)
	if err != nil {
		return err
	}
	e.child = child
	return e.connect(ctx, stable)
}

// connect connects n clients that stay, and measures what they cost the
// server into the result.
func (e *env) connect(ctx context.Context, n int) error {
	mem0, gor0 := serverMemory()
	r := e.dialRequest(opConnect, n, e.userPrefix())
	r.DialConc = e.cfg.dialConc
	rep, err := e.call(r)
	if err != nil {
		return err
	}
	if err := waitConns(ctx, e.srv, n); err != nil {
		return err
	}
	time.Sleep(100 * time.Millisecond) // let the handshakes' leftovers settle
	mem1, gor1 := serverMemory()
	if e.cfg.heapProf != "" {
		if err := writeHeapProfile(e.cfg.heapProf); err != nil {
			return err
		}
	}
	e.res.ServerBytesPerConn = (int64(mem1) - int64(mem0)) / int64(n)
	e.res.GoroutinesPerConn = round(float64(gor1-gor0)/float64(n), 3)
	e.logf("%d clients connected in %v; server memory %d -> %d bytes, goroutines %d -> %d",
		rep.Connected, time.Duration(rep.DialNS).Round(time.Millisecond), mem0, mem1, gor0, gor1)
	return nil
}

// dialRequest is the part of a connect or churn-start request that says
// where and how to dial n clients whose users start with prefix.
func (e *env) dialRequest(op string, n int, prefix string) request {
	return request{
		Op: op, URLs: e.srv.urls(), N: n, Prefix: prefix, PerAddr: e.cfg.perAddr,
		Epoch: e.epoch.UnixNano(), BufSize: min(max(e.cfg.size, 64), 16<<10), Batch: e.res.Batch,
	}
}

// call sends r to the client process, waits for its reply and keeps the
// CPU time it reports.
func (e *env) call(r request) (reply, error) {
	rep, err := e.child.call(r)
	if err == nil {
		e.clientCPU = rep.CPUNS
	}
	return rep, err
}
