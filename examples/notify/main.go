// Command notify pushes notifications to a device from any instance: a
// device (the page at /, "a phone") holds a WebSocket to one instance as
// its device ID; an HTTP request that lands on another instance (POST
// /notify, "a customer places an order", or the button of the admin page
// at /admin, which every instance serves) reaches it with Hub.Send; and the
// sender learns from Hub.Online whether the device is connected anywhere.
//
// Run it on the in-memory backplane, two instances in one process that
// share one memory bus (with logs, so that a device resumes):
//
//	go run ./examples/notify
//
// then open the device at http://127.0.0.1:8080/?device=phone-1 (instance
// 1) and the admin page at http://127.0.0.1:8081/admin (instance 2), and
// send.
//
// Run several processes on one Redis, in Streams mode so that a
// notification sent while the device's instance restarts is delivered when
// the device reconnects (to either instance):
//
//	go run ./examples/notify -backplane 'redis://127.0.0.1:6379/0?mode=streams' -addr 127.0.0.1:8081 -node n1
//	go run ./examples/notify -backplane 'redis://127.0.0.1:6379/0?mode=streams' -addr 127.0.0.1:8082 -node n2
//
// then open http://127.0.0.1:8081/?device=phone-1 and
// http://127.0.0.1:8082/admin, send, stop the first process (Ctrl-C: the
// admin page shows the device offline), send again, start it again, and
// watch the device's page reconnect and get what was sent meanwhile,
// marked "sent while away". Or send from anywhere:
//
//	curl -d '{"to":"phone-1","text":"order 17 is on its way"}' http://127.0.0.1:8082/notify
//
// The flags are:
//
//	-addr ADDR        listen address (default 127.0.0.1:8080)
//	-admin-addr ADDR  without -backplane: the listen address of the second
//	                  instance in the same process (default 127.0.0.1:8081;
//	                  empty for one instance)
//	-backplane URL    backplane to open with backplane.Open: one instance
//	                  per process (default: two instances on a memory bus)
//	-node ID          with -backplane: node ID, unique in the cluster
//	                  (default: random); the memory instances are n1 and n2
//	-drain D          how long a shutdown drains the sessions before it
//	                  closes the rest (default 5s; 0 closes them at once)
//
// Every instance serves /healthz, /readyz and /metrics, as the chat does,
// and drains on SIGTERM or SIGINT: its devices are closed with 1012 and
// reconnect, to another instance behind a load balancer, resuming where
// they left off.
//
// POST /notify takes {"to":"phone-1","text":"..."} and answers
//
//	{"id":"n2-7","to":"phone-1","node":"n2","sessions":1,"kept":true}
//
// where sessions counts the device's sessions anywhere after the send (0:
// offline, -1: the presence record could not be read) and kept says that
// the backplane keeps a log, so that an offline device that resumes later
// still gets it; or 503 {"error":"..."} when the backplane is unavailable
// and nothing was sent. The count is no delivery receipt: a device that
// connected a moment ago may not be counted yet, one whose instance was
// killed is counted until the presence record drops it. GET /online?device=ID
// answers {"device":"phone-1","node":"n2","sessions":1}.
//
// The device connects to /ws?device=ID with the browser client at
// /wshub.js, which resumes (see "Resume" in the wshub package
// documentation), and receives JSON text messages:
//
//	{"type":"welcome","device":"phone-1","node":"n1","backplane":"up"}
//	{"type":"notification","id":"n2-7","text":"...","from":"n2","at":"RFC 3339"}
//	{"type":"backplane","node":"n1","backplane":"down"}
//	{"type":"backplane","node":"n1","backplane":"up","gap":true}
//
// The last two say that the instance lost its link to the others (no
// notification can reach the device meanwhile) and got it back (gap: some
// may have been missed).
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
	"net/url"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/backplane/memory"
	// Backends make their URL scheme known to backplane.Open when imported.
	_ "github.com/wshub/wshub/backplane/redis"
)

// shutdownTimeout bounds a graceful shutdown after the drain.
const shutdownTimeout = 10 * time.Second

// The memory bus's logs: what a device that resumes can get back.
const (
	memoryLogMessages = 10000
	memoryLogAge      = time.Hour
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After the first signal, a second one kills the process at once.
	context.AfterFunc(ctx, stop)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "notify:", err)
		os.Exit(1)
	}
}

// instance is one notifier and its HTTP server.
type instance struct {
	n        *notifier
	srv      *http.Server
	done     chan struct{} // closed when Serve has returned
	serveErr error         // what Serve returned, once done is closed
}

// run parses args and serves one instance (with -backplane) or two on a
// memory bus until ctx is done, then drains and closes them. Logs and usage
// go to stdout.
func run(ctx context.Context, args []string, stdout io.Writer) (err error) {
	fs := flag.NewFlagSet("notify", flag.ContinueOnError)
	fs.SetOutput(stdout)
	addr := fs.String("addr", "127.0.0.1:8080", "listen `address`")
	adminAddr := fs.String("admin-addr", "127.0.0.1:8081", "without -backplane: listen `address` of the second instance (empty for one)")
	bpURL := fs.String("backplane", "", "backplane `URL`, one instance per process (default: two instances on a memory bus)")
	nodeID := fs.String("node", "", "with -backplane: node `ID`, unique in the cluster (default: random)")
	drain := fs.Duration("drain", 5*time.Second, "on shutdown, close the sessions in batches for up to `D` before closing the rest")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	switch {
	case *bpURL != "" && set["admin-addr"]:
		return errors.New("-admin-addr is for the memory instances: with -backplane, run one process per instance")
	case *bpURL == "" && set["node"]:
		return errors.New("-node needs -backplane: the memory instances are n1 and n2")
	}
	log := slog.New(slog.NewTextHandler(stdout, nil))

	// Each instance gets a node of the backplane: one opened from the URL,
	// or nodes of one memory bus. Whoever opens one closes it, after the
	// hub.
	type node struct {
		id, addr string
		bp       backplane.Backplane
		kept     bool
	}
	var nodes []node
	if *bpURL != "" {
		bp, err := backplane.Open(ctx, *bpURL, backplane.WithLogger(log))
		if err != nil {
			return err
		}
		nodes = append(nodes, node{*nodeID, *addr, bp, keepsLog(*bpURL, bp)})
	} else {
		bus := memory.NewBus()
		if err := bus.SetLogLimit(memoryLogMessages, memoryLogAge); err != nil {
			return err
		}
		for i, a := range []string{*addr, *adminAddr} {
			if a == "" {
				continue
			}
			id := fmt.Sprintf("n%d", i+1)
			bp, err := bus.NewNode(id)
			if err != nil {
				return err
			}
			nodes = append(nodes, node{id, a, bp, true})
		}
	}
	defer func() {
		for _, nd := range nodes {
			err = errors.Join(err, nd.bp.Close())
		}
	}()

	var insts []*instance
	defer func() { err = errors.Join(err, shutdown(insts, *drain, log)) }()
	failed := make(chan error, len(nodes))
	for _, nd := range nodes {
		n, err := newNotifier(nd.bp, nd.id, nd.kept, log)
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", nd.addr)
		if err != nil {
			return errors.Join(err, n.Close(ctx))
		}
		in := &instance{n: n, srv: newHTTPServer(n, log), done: make(chan struct{})}
		go func() {
			in.serveErr = in.srv.Serve(ln)
			close(in.done)
			failed <- in.serveErr
		}()
		insts = append(insts, in)
		log.Info("notify listening", "addr", ln.Addr().String(), "node", n.hub.NodeID(), "backplane", *bpURL)
	}

	select {
	case <-ctx.Done():
		return nil
	case err := <-failed: // a listener failed
		return err
	}
}

// keepsLog reports whether the backplane opened from rawURL keeps a log of
// each channel that a device resumes from: one that implements
// backplane.Log (Redis in Streams mode), except a memory node opened from
// a URL, whose bus keeps no logs unless told to (run tells its own bus).
func keepsLog(rawURL string, bp backplane.Backplane) bool {
	_, ok := bp.(backplane.Log)
	u, err := url.Parse(rawURL)
	return ok && err == nil && u.Scheme != "memory"
}

// shutdown drains the instances together, then closes each hub (what is
// left gets 1001) and its HTTP server.
func shutdown(insts []*instance, drain time.Duration, log *slog.Logger) error {
	if len(insts) == 0 {
		return nil
	}
	if drain > 0 {
		log.Info("notify draining", "timeout", drain)
		dctx, cancel := context.WithTimeout(context.Background(), drain)
		var wg sync.WaitGroup
		for _, in := range insts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// A drain cut short is no failure: Close ends what is left.
				if err := in.n.Drain(dctx); err != nil {
					log.Warn("notify drain incomplete", "node", in.n.hub.NodeID(), "err", err)
				}
			}()
		}
		wg.Wait()
		cancel()
	}
	log.Info("notify shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	var err error
	for _, in := range insts {
		// The hub goes first: srv.Shutdown does not wait for hijacked
		// connections, so WebSockets would otherwise be cut without a close.
		err = errors.Join(err, in.n.Close(sctx), in.srv.Shutdown(sctx))
		<-in.done
		if !errors.Is(in.serveErr, http.ErrServerClosed) {
			err = errors.Join(err, in.serveErr)
		}
	}
	log.Info("notify stopped")
	return err
}

// newHTTPServer returns an instance's HTTP server, with every phase before
// the upgrade bounded, as the README's production checklist says.
func newHTTPServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    32 << 10, // room for the resume parameters
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}
