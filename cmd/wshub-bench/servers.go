package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"sync"
	"time"

	"github.com/wshub/wshub"
	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/backplane/memory"
)

// server is what a scenario drives: hubs, or the bare websocket server of
// scenario_raw.go.
type server interface {
	// urls returns the WebSocket URL of each node, all on 127.0.0.1.
	urls() []string
	// conns returns the connections held now, on all nodes.
	conns() int
	// describe writes the server's counters to w.
	describe(w io.Writer)
	// close shuts everything down and waits for every goroutine it started.
	close(ctx context.Context) error
}

// listener is one HTTP server on a loopback port.
type listener struct {
	srv    *http.Server
	url    string
	served chan error
}

func listen(h http.Handler, log *slog.Logger) (*listener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l := &listener{
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		},
		url:    "ws://" + ln.Addr().String() + "/ws",
		served: make(chan error, 1),
	}
	go func() { l.served <- l.srv.Serve(ln) }()
	return l, nil
}

// shutdown stops the server and waits for Serve to return. Hijacked
// connections are not its business: their owner closes them.
func (l *listener) shutdown(ctx context.Context) error {
	err := l.srv.Shutdown(ctx)
	if err != nil {
		_ = l.srv.Close()
	}
	if serr := <-l.served; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	return err
}

// hubCluster is K hubs in this process on one backplane, each behind its own
// HTTP server.
type hubCluster struct {
	hubs []*wshub.Hub
	bps  []backplane.Backplane
	lns  []*listener
}

// hubConfig is what the hubs of a run share.
type hubConfig struct {
	backplaneURL string
	nodes        int
	tag          string // makes node IDs, users and topics unique to the run
	topic        string
	queue        int
	maxMsg       int
	log          *slog.Logger
}

// startHubs starts cfg.nodes hubs. memory:// gives one shared memory.Bus with
// a node per hub (a memory:// URL opens a private bus, so backplane.Open
// cannot make a cluster of them); any other URL is opened once per hub with
// backplane.Open.
func startHubs(ctx context.Context, cfg hubConfig) (_ *hubCluster, err error) {
	c := &hubCluster{}
	defer func() {
		if err != nil {
			cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err = errors.Join(err, c.close(cctx))
		}
	}()
	var bus *memory.Bus
	if isMemoryURL(cfg.backplaneURL) {
		bus = memory.NewBus()
	}
	for i := 0; i < cfg.nodes; i++ {
		if err := c.startNode(ctx, cfg, bus, i+1); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// startNode starts node n: its backplane (a node of bus, if not nil), its
// hub and its HTTP server.
func (c *hubCluster) startNode(ctx context.Context, cfg hubConfig, bus *memory.Bus, n int) error {
	nodeID := fmt.Sprintf("%s-n%d", cfg.tag, n)
	var (
		bp  backplane.Backplane
		err error
	)
	if bus != nil {
		bp, err = bus.NewNode(nodeID)
	} else {
		bp, err = backplane.Open(ctx, cfg.backplaneURL)
	}
	if err != nil {
		return fmt.Errorf("backplane for node %d: %w", n, err)
	}
	c.bps = append(c.bps, bp)
	hub, err := wshub.New(hubOptions(cfg, bp, nodeID))
	if err != nil {
		return fmt.Errorf("hub %d: %w", n, err)
	}
	c.hubs = append(c.hubs, hub)
	mux := http.NewServeMux()
	mux.Handle("/ws", hub)
	l, err := listen(mux, cfg.log)
	if err != nil {
		return err
	}
	c.lns = append(c.lns, l)
	return nil
}

func isMemoryURL(u string) bool { return u == "memory://" || u == "memory:" }

func hubOptions(cfg hubConfig, bp backplane.Backplane, nodeID string) *wshub.Options {
	maxMsg := max(cfg.maxMsg, 1<<20)
	queueBytes := max(4<<20, maxMsg, min(cfg.queue*cfg.maxMsg, 1<<30))
	topic := cfg.topic
	return &wshub.Options{
		Backplane: bp,
		NodeID:    nodeID,
		Authenticate: func(r *http.Request) (string, error) {
			return r.URL.Query().Get("user"), nil
		},
		// Every client is in the topic from the start: the join is in place
		// when its handshake completes.
		OnConnect: func(ctx context.Context, s *wshub.Session) error {
			return s.Join(ctx, topic)
		},
		OnMessage:      joinLeave(topic, cfg.log),
		MaxMessageSize: maxMsg,
		SendQueueLen:   cfg.queue,
		SendQueueBytes: queueBytes,
		Logger:         cfg.log,
	}
}

// joinLeave is the hubs' OnMessage: churners leave and rejoin the topic,
// through the session or cluster-wide through the hub.
func joinLeave(topic string, log *slog.Logger) func(context.Context, *wshub.Session, wshub.Message) {
	return func(ctx context.Context, s *wshub.Session, m wshub.Message) {
		var err error
		switch string(m.Data) {
		case "leave":
			err = s.Leave(topic)
		case "join":
			jctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err = s.Join(jctx, topic)
			cancel()
		case "hub-leave":
			err = s.Hub().Leave(ctx, s.UserID(), topic)
		case "hub-join":
			err = s.Hub().Join(ctx, s.UserID(), topic)
		}
		if err != nil && ctx.Err() == nil {
			log.Warn("join/leave failed", "session", s.ID(), "err", err)
		}
	}
}

func (c *hubCluster) urls() []string {
	u := make([]string, len(c.lns))
	for i, l := range c.lns {
		u[i] = l.url
	}
	return u
}

func (c *hubCluster) conns() int {
	n := 0
	for _, h := range c.hubs {
		n += h.Stats().Sessions
	}
	return n
}

func (c *hubCluster) describe(w io.Writer) {
	for _, h := range c.hubs {
		s := h.Stats()
		fmt.Fprintf(w, "wshub-bench: hub %s: sessions=%d accepted=%d received=%d delivered=%d dropped=%d slow_closed=%d malformed=%d backplane_downs=%d gaps=%d\n",
			h.NodeID(), s.Sessions, s.Accepted, s.Received, s.Delivered, s.Dropped, s.SlowClosed, s.Malformed, s.BackplaneDowns, s.BackplaneGaps)
	}
}

// close closes the hubs (which waits for their sessions), then the HTTP
// servers, then the backplanes: the order the hub's documentation asks for.
func (c *hubCluster) close(ctx context.Context) error {
	errs := make([]error, len(c.hubs))
	var wg sync.WaitGroup
	for i, h := range c.hubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = h.Close(ctx)
		}()
	}
	wg.Wait()
	err := errors.Join(errs...)
	for _, l := range c.lns {
		err = errors.Join(err, l.shutdown(ctx))
	}
	for _, bp := range c.bps {
		err = errors.Join(err, bp.Close())
	}
	c.hubs, c.lns, c.bps = nil, nil, nil
	return err
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
