package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// This file is the client process: the parent re-executes its own binary
// with "-role clients" and drives it with requests on stdin. Keeping the
// clients out of the parent's process keeps their memory and goroutines out
// of the server's measurements. clients_dial.go connects the clients,
// clients_read.go reads and counts what they receive, clients_churn.go
// churns them.

// childInvocation reports whether args (os.Args[1:]) start the client role,
// and returns the rest of them.
func childInvocation(args []string) ([]string, bool) {
	switch {
	case len(args) >= 2 && (args[0] == "-role" || args[0] == "--role") && args[1] == "clients":
		return args[2:], true
	case len(args) >= 1 && (args[0] == "-role=clients" || args[0] == "--role=clients"):
		return args[1:], true
	}
	return nil, false
}

// childMain runs the client role until the parent sends opClose or closes
// stdin, and returns the exit code. It exits the process by itself after
// -timeout, whatever the parent does.
func childMain(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("wshub-bench clients", flag.ContinueOnError)
	fs.SetOutput(stderr)
	timeout := fs.Duration("timeout", 3*time.Minute, "exit after this long whatever happens")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the client process to `file`")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	raiseNofile(stderr)
	if *cpuProfile != "" {
		stop, err := startCPUProfile(*cpuProfile)
		if err != nil {
			fmt.Fprintln(stderr, "wshub-bench clients:", err)
			return 2
		}
		defer stop()
	}
	guard := time.AfterFunc(*timeout, func() {
		fmt.Fprintln(stderr, "wshub-bench clients: -timeout reached, exiting")
		exit(3)
	})
	defer guard.Stop()
	return serveRequests(stdin, stdout, stderr)
}

// serveRequests answers each request on stdin with one reply line on
// stdout, until opClose or the end of stdin, and returns the exit code.
func serveRequests(stdin io.Reader, stdout, stderr io.Writer) int {
	// Requests are read on their own goroutine, so that the parent closing
	// stdin (it died, or gave up) cancels whatever is running.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reqs := readRequests(ctx, cancel, stdin, stderr)

	cs := &clientSet{log: stderr}
	defer cs.closeAll()
	enc := json.NewEncoder(stdout)
	for r := range reqs {
		rep := cs.handle(ctx, r)
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintln(stderr, "wshub-bench clients: writing reply:", err)
			return 1
		}
		if r.Op == opClose {
			return 0
		}
	}
	return 0
}

// readRequests decodes the requests on stdin into the channel it returns,
// until stdin ends or ctx does; then it closes the channel and cancels ctx.
func readRequests(ctx context.Context, cancel context.CancelFunc, stdin io.Reader, stderr io.Writer) <-chan request {
	reqs := make(chan request)
	go func() {
		defer close(reqs)
		defer cancel()
		dec := json.NewDecoder(stdin)
		for {
			var r request
			if err := dec.Decode(&r); err != nil {
				if !errors.Is(err, io.EOF) {
					fmt.Fprintln(stderr, "wshub-bench clients: reading requests:", err)
				}
				return
			}
			select {
			case reqs <- r:
			case <-ctx.Done():
				return
			}
		}
	}()
	return reqs
}

// client is one WebSocket connection of the client process.
type client struct {
	idx    int
	conn   *websocket.Conn
	count  atomic.Int64 // messages received (records, in the batched framing)
	frames atomic.Int64 // WebSocket messages received
	maxLat atomic.Int64 // ns
	last   atomic.Int64 // latest arrival, ns since the epoch
	// closing is set before we close the connection ourselves; a reader
	// that ends without it was closed by the server.
	closing atomic.Bool
	done    chan struct{}
}

type clientSet struct {
	log io.Writer

	epoch   int64 // unix nanos
	bufSize int
	batch   bool // the batched framing: ask for it, split messages into records
	hist    histogram
	bad     atomic.Int64
	closedE atomic.Int64 // stable clients the server closed
	churnRx atomic.Int64 // messages received by churners

	mu      sync.Mutex
	http    map[int]*http.Client // by source address index
	stable  []*client
	readers sync.WaitGroup
	churn   *churner
}

func (cs *clientSet) handle(ctx context.Context, r request) reply {
	var (
		rep reply
		err error
	)
	switch r.Op {
	case opConnect:
		rep, err = cs.connect(ctx, r)
	case opDrain:
		rep = cs.drain(ctx, r)
	case opChurnStart:
		err = cs.startChurn(ctx, r)
	case opChurnStop:
		rep = cs.stopChurn()
	case opClose:
		cs.closeAll()
	default:
		err = fmt.Errorf("unknown op %q", r.Op)
	}
	if err != nil {
		rep.Err = err.Error()
	}
	rep.CPUNS = int64(cpuTime())
	return rep
}

// configure takes the run's settings from the first connect or churn-start
// request. cs.mu is held.
func (cs *clientSet) configure(r request) {
	cs.epoch, cs.bufSize, cs.batch = r.Epoch, max(r.BufSize, 64), r.Batch
}

// closeAll closes every connection at once (no close handshake: the server
// sees the end of the stream) and waits for every reader.
func (cs *clientSet) closeAll() {
	cs.mu.Lock()
	ch := cs.churn
	cs.mu.Unlock()
	if ch != nil {
		cs.stopChurn()
	}
	cs.mu.Lock()
	clients := cs.stable
	cs.mu.Unlock()
	for _, c := range clients {
		if c != nil {
			c.closing.Store(true)
			_ = c.conn.CloseNow()
		}
	}
	cs.readers.Wait()
	cs.mu.Lock()
	for _, hc := range cs.http {
		hc.CloseIdleConnections()
	}
	cs.mu.Unlock()
}
