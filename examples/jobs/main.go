// Command jobs takes jobs over WebSockets and answers each one, when a
// worker somewhere has computed it, to the user who asked: a client sends
// {"id":"j1","input":"360"}, the node that holds its socket queues the job,
// a worker (in this process, or examples/jobs/worker in another) factors the
// number after a random delay, so that results come back out of order, and
// sends {"type":"result","id":"j1","output":"2^3 × 3^2 × 5",...} with
// Hub.Send to the user: it reaches their tabs on whichever node they are
// connected to now. On Redis Streams a tab that was away (its node died, it
// reconnected to another) resumes and gets the results sent meanwhile.
//
// Run it on the in-memory backplane, with workers in the process:
//
//	go run ./examples/jobs
//
// then open http://127.0.0.1:8080 and submit a few numbers.
//
// Run it as a cluster on one Redis: two nodes, and a worker of its own; the
// queue is a Redis stream read by a consumer group, the backplane Redis
// Streams on the same server:
//
//	go run ./examples/jobs -redis redis://127.0.0.1:6379/0 -addr 127.0.0.1:8081
//	go run ./examples/jobs -redis redis://127.0.0.1:6379/0 -addr 127.0.0.1:8082
//	go run ./examples/jobs/worker -redis redis://127.0.0.1:6379/0
//
// The flags are:
//
//	-addr ADDR      listen address (default 127.0.0.1:8080)
//	-redis URL      the Redis of the job queue, a stream with a consumer group
//	                (default: a queue in this process)
//	-backplane URL  backplane to open with backplane.Open (default: with
//	                -redis, Redis Streams on it; without, an in-memory bus
//	                that keeps logs, so that a tab that reconnects resumes)
//	-workers N      workers in this process (default 4 without -redis, 0 with it)
//	-node ID        node ID, unique in the cluster (default: random)
//	-drain D        how long a shutdown drains the sessions (default 15s)
//
// It serves /healthz, /readyz and /metrics, and drains on SIGTERM or
// SIGINT, as the chat example does.
//
// The page at / loads /wshub.js, the examples' browser client, and speaks
// JSON over the WebSocket at /ws?user=NAME, resuming where it left off when
// it reconnects. The client sends jobs:
//
//	{"id":"j1","input":"360"}
//
// and receives, on its user's channel (every tab of the user, resumed after
// a reconnect):
//
//	{"type":"queued","id":"j1","input":"360","node":"n1"}
//	{"type":"result","id":"j1","input":"360","output":"2^3 × 3^2 × 5","worker":"w1","node":"n1","ms":734}
//	{"type":"result","id":"j2","input":"x","error":"not a whole number from 2 to 10^12: \"x\"",...}
//
// and on its session alone:
//
//	{"type":"welcome","user":"alice","node":"n1","backplane":"up"}
//	{"type":"backplane","backplane":"down"} and {"type":"backplane","backplane":"up","gap":true}
//	{"type":"rejected","id":"j1","error":"..."} (the queue is down: send it again)
//	{"type":"error","id":"j1","error":"..."} (an invalid job)
//
// Delivery: the queue takes a job ID once per user (for an hour), so a
// client may send a job again until it sees it queued; a worker
// acknowledges a job once its result is sent, so a worker killed in between
// leaves it to another, which sends the result again: results are
// at-least-once, and the client keeps the first per job ID.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/backplane/memory"
	_ "github.com/wshub/wshub/backplane/redis" // redis:// for backplane.Open
	"github.com/wshub/wshub/examples/jobs/internal/work"
)

// shutdownTimeout bounds a graceful shutdown after the drain.
const shutdownTimeout = 10 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	context.AfterFunc(ctx, stop) // a second signal kills at once
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "jobs:", err)
		os.Exit(1)
	}
}

func newHTTPServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    32 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// run parses args and serves until ctx is done, then drains the hub, stops
// the workers, closes the hub, the HTTP server, the queue's Redis client and
// the backplane. Logs and usage go to stdout.
func run(ctx context.Context, args []string, stdout io.Writer) (err error) {
	fs := flag.NewFlagSet("jobs", flag.ContinueOnError)
	fs.SetOutput(stdout)
	addr := fs.String("addr", "127.0.0.1:8080", "listen `address`")
	redisURL := fs.String("redis", "", "`URL` of the Redis holding the job queue (default: a queue in this process)")
	bpURL := fs.String("backplane", "", "backplane `URL` (default: Redis Streams on -redis, else an in-memory bus with logs)")
	workers := fs.Int("workers", -1, "`N` workers in this process (default 4 without -redis, 0 with it)")
	nodeID := fs.String("node", "", "node `ID`, unique in the cluster (default: random)")
	drain := fs.Duration("drain", 15*time.Second, "on shutdown, close the sessions in batches for up to `D`")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if *workers < 0 {
		*workers = 4
		if *redisURL != "" {
			*workers = 0
		}
	}
	log := slog.New(slog.NewTextHandler(stdout, nil))

	var q work.Queue
	if *redisURL != "" {
		opt, err := redis.ParseURL(*redisURL)
		if err != nil {
			return fmt.Errorf("-redis: %w", err)
		}
		rdb := redis.NewClient(opt)
		defer func() { err = errors.Join(err, rdb.Close()) }()
		if q, err = work.NewRedis(ctx, rdb, &work.RedisOptions{Logger: log}); err != nil {
			return err
		}
		if *bpURL == "" {
			*bpURL = work.StreamsURL(*redisURL)
		}
	} else {
		q = work.NewMemory(10000)
	}

	var bp backplane.Backplane
	if *bpURL != "" {
		if bp, err = backplane.Open(ctx, *bpURL, backplane.WithLogger(log)); err != nil {
			return err
		}
	} else {
		// A bus of this process's own that keeps a log per channel, so that
		// a tab that reconnects resumes on memory too.
		bus := memory.NewBus()
		if err := bus.SetLogLimit(1000, 5*time.Minute); err != nil {
			return err
		}
		if bp, err = bus.NewNode("local"); err != nil {
			return err
		}
	}
	defer func() { err = errors.Join(err, bp.Close()) }()

	a, err := newApp(bp, *nodeID, q, log)
	if err != nil {
		return err
	}
	wctx, stopWorkers := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	if *workers > 0 {
		w := &work.Worker{Queue: q, Hub: a.hub, Name: "local-" + a.hub.NodeID(), Concurrency: *workers, Logger: log}
		wg.Add(1)
		go func() { defer wg.Done(); _ = w.Run(wctx) }()
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		stopWorkers()
		wg.Wait()
		return errors.Join(err, a.Close(ctx))
	}
	srv := newHTTPServer(a, log)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("jobs listening", "addr", ln.Addr().String(), "node", a.hub.NodeID(), "backplane", *bpURL, "redis", *redisURL, "workers", *workers)

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-served:
	}
	if *drain > 0 && serveErr == nil {
		log.Info("jobs draining", "timeout", *drain)
		dctx, cancel := context.WithTimeout(context.Background(), *drain)
		if err := a.Drain(dctx); err != nil {
			log.Warn("jobs drain incomplete", "err", err)
		}
		cancel()
	}
	log.Info("jobs shutting down")
	// The workers send with the hub: they stop first. A job they were
	// computing stays in the queue for the next worker.
	stopWorkers()
	wg.Wait()
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	err = errors.Join(serveErr, a.Close(sctx), srv.Shutdown(sctx))
	if serveErr == nil {
		<-served
	}
	log.Info("jobs stopped")
	return err
}
