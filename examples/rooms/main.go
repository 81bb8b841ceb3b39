// Command rooms is a live binary stream shared by a room of viewers across
// instances: a separate service (the streamer, in ./streamer) sends frames
// of generated video over TCP to the ingest port of any instance; that
// instance broadcasts each frame to the room with wshub, and every viewer,
// on whichever instance its browser is connected to, receives it byte for
// byte and draws it on a canvas.
//
// Run one instance on the in-memory backplane, with the streamer inside the
// same process:
//
//	go run ./examples/rooms
//
// then open http://127.0.0.1:8080/?name=A and http://127.0.0.1:8080/?name=B.
//
// Run two instances on one Redis and the streamer as its own process,
// failing over from one ingest port to the other; open one page on each:
//
//	go run ./examples/rooms -backplane redis://127.0.0.1:6379/0 -addr :8081 -ingest 127.0.0.1:9001 -stream=false
//	go run ./examples/rooms -backplane redis://127.0.0.1:6379/0 -addr :8082 -ingest 127.0.0.1:9002 -stream=false
//	go run ./examples/rooms/streamer -ingest 127.0.0.1:9001,127.0.0.1:9002
//
// Redis pub/sub (the default mode) is the right backplane for live video:
// it has the lowest latency, and what it loses in an outage is frames that
// would be stale by the time they arrived. Streams (mode=streams) would
// replay them to a reconnecting viewer: right for chat, wrong here.
//
// The flags are:
//
//	-addr ADDR      listen address of the page and the WebSocket (default 127.0.0.1:8080)
//	-ingest ADDR    TCP address of the ingest port (default 127.0.0.1:9000)
//	-backplane URL  backplane to open with backplane.Open, such as
//	                redis://127.0.0.1:6379/0 (default: the hub's private
//	                in-memory backplane)
//	-node ID        node ID, unique in the cluster (default: random)
//	-stream         run a streamer in this process, into this instance's
//	                ingest port (default true)
//	-room NAME      the in-process streamer's room (default demo)
//	-fps N          the in-process streamer's frames a second (default 20)
//	-drain D        on shutdown, move the viewers away in batches for up to D
//	                (default 5s; 0 closes them at once)
//
// A viewer connects to /ws?name=NAME&room=ROOM (room default demo). It
// receives a text message {"type":"welcome","user":"A","node":"n1",
// "room":"demo","state":"up"}, then every frame as a binary message, and
// {"type":"backplane","state":"down"} or {"type":"backplane","state":"up",
// "gap":true} when this instance's link to the others goes down or comes
// back. Each viewer has a small queue (64 KiB, about 13 frames) under
// wshub.SlowDropOldest: one that reads too slowly loses its oldest frames,
// counted in the hub's Stats().Dropped and the
// wshub_messages_dropped_total metric, and never holds up the others. The page counts the frames it missed from the
// gaps in their sequence numbers.
//
// It serves /healthz, /readyz and /metrics (the hub's metrics, and the
// ingest's frames broadcast, failed and skipped: rooms_ingest_*), and drains on SIGTERM or
// SIGINT as examples/chat does: the ingest's streams are closed (a streamer
// fails over to another instance), the viewers are closed in batches with
// 1012 so that they reconnect elsewhere at once, then the hub closes.
//
// The ingest port speaks the protocol of package stream
// (examples/rooms/internal/stream): length-prefixed records, the room's name
// first, then frames. It trusts whoever connects: keep it on a private
// network, or authenticate the first record in a real service.
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

	"github.com/wshub/wshub/backplane"
	_ "github.com/wshub/wshub/backplane/memory"
	_ "github.com/wshub/wshub/backplane/redis"
	"github.com/wshub/wshub/examples/rooms/internal/stream"
)

// shutdownTimeout bounds a shutdown after the drain.
const shutdownTimeout = 10 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	context.AfterFunc(ctx, stop) // a second signal kills at once
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "rooms:", err)
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

// run parses args, serves until ctx is done, then shuts down: the
// in-process streamer, a drain, the hub and the ingest, the HTTP server,
// then the backplane if run opened one.
func run(ctx context.Context, args []string, stdout io.Writer) (err error) {
	fs := flag.NewFlagSet("rooms", flag.ContinueOnError)
	fs.SetOutput(stdout)
	addr := fs.String("addr", "127.0.0.1:8080", "listen `address` of the page and the WebSocket")
	ingestAddr := fs.String("ingest", "127.0.0.1:9000", "TCP `address` of the ingest port")
	bpURL := fs.String("backplane", "", "backplane `URL`, such as redis://127.0.0.1:6379/0 (default: the hub's private in-memory backplane)")
	nodeID := fs.String("node", "", "node `ID`, unique in the cluster (default: random)")
	inProcess := fs.Bool("stream", true, "run a streamer in this process, into this instance's ingest port")
	room := fs.String("room", defaultRoom, "the in-process streamer's `room`")
	fps := fs.Int("fps", stream.DefaultFPS, "the in-process streamer's frames a second")
	drain := fs.Duration("drain", 5*time.Second, "on shutdown, close the viewers in batches for up to `D` before closing the rest")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if !validName(*room) {
		return fmt.Errorf("invalid room %q", *room)
	}
	log := slog.New(slog.NewTextHandler(stdout, nil))

	var bp backplane.Backplane
	if *bpURL != "" {
		if bp, err = backplane.Open(ctx, *bpURL, backplane.WithLogger(log)); err != nil {
			return err
		}
		defer func() { err = errors.Join(err, bp.Close()) }()
	}
	r, err := newRooms(bp, *nodeID, log)
	if err != nil {
		return err
	}
	iln, err := net.Listen("tcp", *ingestAddr)
	if err != nil {
		return errors.Join(err, r.Close(ctx))
	}
	r.serveIngest(iln)
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return errors.Join(err, r.Close(ctx))
	}
	srv := newHTTPServer(r, log)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("rooms listening", "addr", ln.Addr().String(), "ingest", iln.Addr().String(), "node", r.hub.NodeID(), "backplane", *bpURL)

	sctx, stopStreamer := context.WithCancel(context.Background())
	var streamer sync.WaitGroup
	if *inProcess {
		s := &stream.Streamer{Addrs: []string{iln.Addr().String()}, Room: *room, FPS: *fps, Logger: log}
		streamer.Add(1)
		go func() {
			defer streamer.Done()
			_ = s.Run(sctx)
		}()
	}

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-served:
	}
	stopStreamer()
	streamer.Wait()
	r.stopIngest() // an external streamer moves to another instance
	if *drain > 0 && serveErr == nil {
		log.Info("rooms draining", "timeout", *drain)
		dctx, cancel := context.WithTimeout(context.Background(), *drain)
		if err := r.Drain(dctx); err != nil {
			log.Warn("rooms drain incomplete", "err", err)
		}
		cancel()
	}
	log.Info("rooms shutting down")
	cctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	err = errors.Join(serveErr, r.Close(cctx), srv.Shutdown(cctx))
	if serveErr == nil {
		<-served
	}
	log.Info("rooms stopped")
	return err
}
