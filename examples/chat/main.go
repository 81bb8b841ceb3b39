// Command chat is a multi-user chat served by a wshub hub: rooms are topics,
// room messages are broadcasts and direct messages are sent to a user, on
// whichever node the user's browser tabs are connected.
//
// Run one node on the in-memory backplane:
//
//	go run ./examples/chat
//
// then open http://127.0.0.1:8080 in two browser tabs and pick two names.
//
// Run a cluster of two nodes on a Redis and open one tab on each; the users
// still talk to each other:
//
//	go run ./examples/chat -backplane redis://127.0.0.1:6379 -addr :8081
//	go run ./examples/chat -backplane redis://127.0.0.1:6379 -addr :8082
//
// The flags are:
//
//	-addr ADDR      listen address (default 127.0.0.1:8080)
//	-backplane URL  backplane to open with backplane.Open, such as memory://
//	                (default: the hub's private in-memory backplane)
//	-node ID        node ID, unique in the cluster (default: random)
//	-max-conns N    connections the listener accepts at once (default 10000)
//	-drain D        how long a shutdown drains the sessions before it closes
//	                the rest (default 15s; 0 closes them at once)
//
// It serves /healthz (liveness) and /readyz (readiness) for a load balancer
// or Kubernetes probes. On SIGTERM or SIGINT it drains: readiness fails at
// once, new upgrades get 503, and the sessions are closed in small batches
// with status 1012 (service restart), so that clients reconnect to the other
// nodes at once but not all at the same instant; then it closes the hub and
// the HTTP server (within 10s more) and exits. In Kubernetes, keep
// terminationGracePeriodSeconds above the drain plus those 10s: the default
// 30 fits the default 15s drain. A second signal kills the process at once.
//
// The page at / uses the small client the examples share (/wshub.js, see
// package examples/internal/webclient; a plain WebSocket would do) and speaks
// JSON over the WebSocket at /ws?name=NAME, adding
// room=ROOM for each room to be in when it connects (the lobby when none is
// named), and resumes where it left off when it reconnects, with wshub's
// resume parameters (see "Resume" in the wshub package documentation): a
// direct or room message sent while its node restarts is not lost on a
// backplane that keeps logs (redis://...?mode=streams). The client sends
//
//	{"type":"join","room":"r"}
//	{"type":"leave","room":"r"}
//	{"type":"say","room":"r","text":"..."}
//	{"type":"dm","to":"bob","text":"..."}
//
// and receives
//
//	{"type":"welcome","user":"alice","node":"n1"}
//	{"type":"backplane","state":"down"} and {"type":"backplane","state":"restored","gap":true}
//	{"type":"joined","room":"r"} and {"type":"left","room":"r"}
//	{"type":"members","room":"r","members":["alice","bob"],"count":2}
//	{"type":"presence","room":"r","user":"bob","state":"joined"} (or "left")
//	{"type":"message","room":"r","from":"alice","text":"...","at":"RFC3339 time"}
//	{"type":"dm","from":"alice","to":"bob","text":"...","at":"RFC3339 time"}
//	{"type":"undelivered","to":"bob","text":"bob is offline; the message was not delivered"}
//	{"type":"error","text":"..."}
//
// Empty fields are left out. Each room has a live member list. The first
// join of a room is answered with "joined", then "members": the first 100
// users in the room, in byte order, and how many there are in all, read from
// the cluster's presence record. From then on the hub broadcasts "presence"
// to the room whenever a user first joins it or last leaves it, on any node,
// so the client never polls. A presence message can overtake "members", or
// repeat what it holds: the client keeps those that come early and applies
// each one on top of the list, in the order they arrive. A direct message to
// a user connected nowhere is not sent: the sender gets "undelivered"
// (unless the node's backplane came back within the last 10s: the presence
// record may then be missing users who are online, and the message is sent).
//
// A node tells its sessions when its link to the backplane goes down (the
// page shows "offline: messages may be delayed": what the node's users send
// does not reach the other nodes, and what the others send does not reach
// them) and when it is restored, with "gap" set when messages may have been
// missed meanwhile (the page says so). A session that connects while the
// link is down gets "down" after its welcome.
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
	"syscall"
	"time"

	"github.com/wshub/wshub/backplane"
	// Backends make their URL scheme known to backplane.Open when imported.
	_ "github.com/wshub/wshub/backplane/memory"
	_ "github.com/wshub/wshub/backplane/redis"
)

// shutdownTimeout bounds a graceful shutdown after the drain: closing the
// sessions left, then the HTTP server.
const shutdownTimeout = 10 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After the first signal, a second one kills the process at once.
	context.AfterFunc(ctx, stop)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "chat:", err)
		os.Exit(1)
	}
}

// newHTTPServer returns the chat's HTTP server, set up as the README's
// production checklist says: every phase before the upgrade is bounded
// (the hub owns the deadlines of a WebSocket once it has the connection;
// net/http clears its own at the hijack).
func newHTTPServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,  // a half-sent request holds a goroutine for no longer
		ReadTimeout:       10 * time.Second, // the whole request, up to the upgrade
		WriteTimeout:      10 * time.Second, // the response to a plain HTTP request
		IdleTimeout:       60 * time.Second, // keep-alive connections between requests
		MaxHeaderBytes:    32 << 10,         // room for the resume parameters, no more
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// run parses args, serves the chat until ctx is done, then shuts it down:
// it drains the hub (its sessions get a 1012 close, in batches), closes it
// (whatever is left gets 1001), then the HTTP server, then the backplane if
// run opened one. Logs and usage go to stdout.
func run(ctx context.Context, args []string, stdout io.Writer) (err error) {
	fs := flag.NewFlagSet("chat", flag.ContinueOnError)
	fs.SetOutput(stdout)
	addr := fs.String("addr", "127.0.0.1:8080", "listen `address`")
	bpURL := fs.String("backplane", "", "backplane `URL`, such as memory:// (default: the hub's private in-memory backplane)")
	nodeID := fs.String("node", "", "node `ID`, unique in the cluster (default: random)")
	maxConns := fs.Int("max-conns", 10000, "at most `N` connections open at once; keep it below the file descriptor limit")
	drain := fs.Duration("drain", 15*time.Second, "on shutdown, close the sessions in batches for up to `D` before closing the rest")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	log := slog.New(slog.NewTextHandler(stdout, nil))

	// The hub never closes a backplane it was given: whoever opens one
	// closes it, after the hub.
	var bp backplane.Backplane
	if *bpURL != "" {
		if bp, err = backplane.Open(ctx, *bpURL, backplane.WithLogger(log)); err != nil {
			return err
		}
		defer func() { err = errors.Join(err, bp.Close()) }()
	}

	c, err := newChat(bp, *nodeID, log)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return errors.Join(err, c.Close(ctx))
	}
	ln = limitListener(ln, *maxConns)
	srv := newHTTPServer(c, log)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("chat listening", "addr", ln.Addr().String(), "node", c.hub.NodeID(), "backplane", *bpURL)

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-served: // the listener failed
	}
	if *drain > 0 && serveErr == nil {
		log.Info("chat draining", "timeout", *drain)
		dctx, cancel := context.WithTimeout(context.Background(), *drain)
		// A drain cut short is no failure: Close ends what is left.
		if err := c.Drain(dctx); err != nil {
			log.Warn("chat drain incomplete", "err", err)
		}
		cancel()
	}
	log.Info("chat shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	// The hub goes first: srv.Shutdown does not wait for hijacked
	// connections, so WebSockets would otherwise be cut without a close.
	err = errors.Join(serveErr, c.Close(sctx), srv.Shutdown(sctx))
	if serveErr == nil {
		<-served // http.ErrServerClosed
	}
	log.Info("chat stopped")
	return err
}
