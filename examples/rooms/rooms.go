package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wshub/wshub"
	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/examples/internal/webclient"
	"github.com/wshub/wshub/examples/rooms/internal/stream"
	"github.com/wshub/wshub/metrics"
)

// The viewers' side of the hub: live video wants fresh frames, not every
// frame, so a viewer that falls behind loses its oldest queued frames
// instead of holding up anyone or being closed.
const (
	// maxFrame is the largest message the hub sends: a frame of the
	// largest size the ingest port takes.
	maxFrame = 16 << 10
	// queueBytes is each viewer's queue: about 13 frames of the default
	// 80 × 60, 0.65 s at 20 frames a second. A viewer that falls further
	// behind drops its oldest frames (SlowDropOldest).
	queueBytes = 64 << 10
	// socketBuffer is each viewer's kernel send buffer: the bytes the
	// hub can no longer drop. Small, so a slow viewer's frames stay fresh.
	socketBuffer = 16 << 10
	// readLimit is the largest message a viewer may send: viewers only
	// watch.
	readLimit = 4 << 10
	// publishTimeout bounds one frame's broadcast: a frame that cannot be
	// published in time is dropped, and the next one tried.
	publishTimeout = time.Second
	// helloTimeout bounds the wait for an ingest connection's first record.
	helloTimeout = 5 * time.Second
	// defaultRoom is the room a viewer watches when it names none.
	defaultRoom = "demo"
	maxNameLen  = 32
)

//go:embed index.html
var indexHTML []byte

// ingestHelp describes the ingest's counters, exported as
// rooms_ingest_<name>_total.
var ingestHelp = map[string]string{
	"frames":  "Frames from this node's ingest port broadcast to their room.",
	"failed":  "Frames from this node's ingest port the backplane did not take (dropped).",
	"skipped": "Frames from this node's ingest port replaced by a newer one before their broadcast.",
}

// notice is a text message to a viewer; empty fields are left out.
type notice struct {
	Type  string `json:"type"`            // "welcome" or "backplane"
	User  string `json:"user,omitempty"`  // welcome
	Node  string `json:"node,omitempty"`  // welcome
	Room  string `json:"room,omitempty"`  // welcome
	State string `json:"state,omitempty"` // backplane: "down" or "up"; welcome: the backplane's now
	Gap   bool   `json:"gap,omitempty"`   // backplane up: frames may have been missed
}

// rooms is the application: an http.Handler serving the page at /, the hub
// at /ws and the operations endpoints, and an ingest port whose streams it
// broadcasts into rooms. Its goroutines are the ingest's; Close waits for
// them.
type rooms struct {
	hub *wshub.Hub
	log *slog.Logger
	mux *http.ServeMux

	mu       sync.Mutex
	sessions map[*wshub.Session]struct{} // open on this node, for backplane notices
	down     bool                        // the backplane reported its link down
	ingest   net.Listener
	conns    map[net.Conn]struct{}
	closed   bool
	wg       sync.WaitGroup // ingest goroutines

	frames  atomic.Uint64 // frames broadcast from this node's ingest
	failed  atomic.Uint64 // frames the backplane did not take
	skipped atomic.Uint64 // frames replaced by a newer one before their broadcast
}

// newRooms returns the application on a new hub; bp may be nil for the
// hub's private in-memory backplane, nodeID empty for a random one. The
// caller closes it with Close, and then bp.
func newRooms(bp backplane.Backplane, nodeID string, log *slog.Logger) (*rooms, error) {
	r := &rooms{log: log, mux: http.NewServeMux(), sessions: make(map[*wshub.Session]struct{}), conns: make(map[net.Conn]struct{})}
	hub, err := wshub.New(&wshub.Options{
		Backplane:         bp,
		NodeID:            nodeID,
		Authenticate:      authenticate,
		OnConnect:         r.onConnect,
		OnMessage:         func(context.Context, *wshub.Session, wshub.Message) {}, // viewers only watch
		OnDisconnect:      r.onDisconnect,
		OnBackplaneEvent:  r.onBackplaneEvent,
		ReadLimit:         readLimit,
		MaxMessageSize:    maxFrame,
		SendQueueBytes:    queueBytes,
		SlowPolicy:        wshub.SlowDropOldest,
		SocketWriteBuffer: socketBuffer,
		Logger:            log,
	})
	if err != nil {
		return nil, err
	}
	r.hub = hub
	r.mux.HandleFunc("GET /{$}", serveIndex)
	r.mux.Handle("GET /wshub.js", webclient.Handler())
	r.mux.Handle("/ws", hub)
	r.mux.Handle("GET /healthz", hub.LivenessHandler())
	r.mux.Handle("GET /readyz", hub.ReadinessHandler())
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewCollector(hub), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for name, c := range map[string]*atomic.Uint64{
		"frames":  &r.frames,
		"failed":  &r.failed,
		"skipped": &r.skipped,
	} {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "rooms_ingest_" + name + "_total",
			Help: ingestHelp[name],
		}, func() float64 { return float64(c.Load()) }))
	}
	r.mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return r, nil
}

func (r *rooms) ServeHTTP(w http.ResponseWriter, req *http.Request) { r.mux.ServeHTTP(w, req) }

func serveIndex(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	_, _ = w.Write(indexHTML)
}

// authenticate takes the viewer's name from the "name" query parameter.
// This is a demo: a real application authenticates the upgrade request.
func authenticate(req *http.Request) (string, error) {
	name := req.URL.Query().Get("name")
	if !validName(name) {
		return "", fmt.Errorf("invalid name %q", name)
	}
	return name, nil
}

// validName reports whether s is 1 to 32 letters, digits, '-' or '_': a
// viewer's name or a room's.
func validName(s string) bool {
	if s == "" || len(s) > maxNameLen {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// onConnect joins the room named by the "room" query parameter (default
// "demo") before the handshake completes, so that the first frame
// broadcast after the page sees the connection open reaches it, and tells
// the viewer where it is.
func (r *rooms) onConnect(ctx context.Context, s *wshub.Session) error {
	room := s.Request().URL.Query().Get("room")
	if room == "" {
		room = defaultRoom
	}
	if !validName(room) {
		return fmt.Errorf("invalid room %.40q", room)
	}
	jctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s.Join(jctx, room); err != nil {
		r.log.Warn("join failed", "room", room, "err", err)
		// Transient (the backplane, typically): ask the client to retry.
		_ = s.Close(wshub.StatusTryAgainLater, "could not join the room")
		return nil
	}
	r.mu.Lock()
	r.sessions[s] = struct{}{}
	state := "up"
	if r.down {
		state = "down"
	}
	r.mu.Unlock()
	r.tell(s, notice{Type: "welcome", User: s.UserID(), Node: r.hub.NodeID(), Room: room, State: state})
	return nil
}

func (r *rooms) onDisconnect(s *wshub.Session, _ error) {
	r.mu.Lock()
	delete(r.sessions, s)
	r.mu.Unlock()
}

// onBackplaneEvent tells every viewer of this node that the link to the
// other nodes went down or came back, so that a page shows the outage
// instead of a frozen picture. It only queues (Session.Send never blocks),
// as OnBackplaneEvent must.
func (r *rooms) onBackplaneEvent(e backplane.Event) {
	n := notice{Type: "backplane", State: "up", Gap: e.Gap}
	r.mu.Lock()
	r.down = e.Kind == backplane.EventDown
	if r.down {
		n.State = "down"
	}
	for s := range r.sessions {
		r.tell(s, n)
	}
	r.mu.Unlock()
}

func (r *rooms) tell(s *wshub.Session, n notice) {
	b, err := json.Marshal(n)
	if err != nil {
		panic(err) // strings and a bool
	}
	_ = s.Send(wshub.TextBytes(b))
}

// serveIngest accepts streams on ln until Close.
func (r *rooms) serveIngest(ln net.Listener) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		_ = ln.Close()
		return
	}
	r.ingest = ln
	r.wg.Add(1)
	r.mu.Unlock()
	go func() {
		defer r.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed
			}
			r.mu.Lock()
			if r.closed {
				r.mu.Unlock()
				_ = c.Close()
				return
			}
			r.conns[c] = struct{}{}
			r.wg.Add(1)
			r.mu.Unlock()
			go func() {
				defer r.wg.Done()
				r.ingestConn(c)
				r.mu.Lock()
				delete(r.conns, c)
				r.mu.Unlock()
				_ = c.Close()
			}()
		}
	}()
}

// ingestConn reads one stream: a room name, then frames, each broadcast to
// the room's viewers on every node. This node need not have a viewer: the
// backplane carries the frame to the nodes that do.
//
// Reading and broadcasting are decoupled by a mailbox of one frame: when
// the backplane is slow or down, the newest frame replaces the one waiting
// (counted in skipped), so no backlog of stale frames builds up to be
// replayed when it comes back.
func (r *rooms) ingestConn(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(helloTimeout))
	hello, err := stream.ReadRecord(c, maxNameLen)
	room := string(hello)
	if err != nil || !utf8.Valid(hello) || !validName(room) {
		r.log.Warn("ingest refused", "remote", c.RemoteAddr().String(), "err", err, "room", strings.ToValidUTF8(room, "?"))
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	r.log.Info("ingest streaming", "remote", c.RemoteAddr().String(), "room", room)
	latest := make(chan []byte, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.broadcastFrames(room, latest)
	}()
	defer func() {
		close(latest)
		<-done
	}()
	for {
		f, err := stream.ReadRecord(c, stream.MaxRecord)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				r.log.Info("ingest ended", "room", room, "err", err)
			}
			return
		}
		select {
		case latest <- f:
		default: // the broadcaster is behind: replace the waiting frame
			select {
			case <-latest:
				r.skipped.Add(1)
			default:
			}
			latest <- f // this goroutine is the only sender
		}
	}
}

// broadcastFrames broadcasts each frame of latest to room until latest is
// closed.
func (r *rooms) broadcastFrames(room string, latest <-chan []byte) {
	failing := false
	for f := range latest {
		// Pub/sub's at-most-once is right for live video: a frame the
		// backplane cannot take now is dropped, not retried, and the
		// viewers see the gap.
		ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
		err := r.hub.Broadcast(ctx, room, wshub.Binary(f))
		cancel()
		switch {
		case errors.Is(err, wshub.ErrClosed):
			return
		case err != nil:
			r.failed.Add(1)
			if !failing {
				r.log.Warn("frames not broadcast", "room", room, "err", err)
			}
			failing = true
		default:
			r.frames.Add(1)
			if failing {
				r.log.Info("frames broadcast again", "room", room)
			}
			failing = false
		}
	}
}

// Drain takes the node out of service; see wshub.Hub.Drain.
func (r *rooms) Drain(ctx context.Context) error { return r.hub.Drain(ctx) }

// Close stops the ingest (closing its streams: a streamer fails over to
// another node), waits for its goroutines, then closes the hub gracefully.
func (r *rooms) Close(ctx context.Context) error {
	r.stopIngest()
	return r.hub.Close(ctx)
}

// stopIngest closes the ingest port and its streams, and waits for their
// goroutines: a streamer fails over to another instance. Calling it again
// does nothing.
func (r *rooms) stopIngest() {
	r.mu.Lock()
	r.closed = true
	if r.ingest != nil {
		_ = r.ingest.Close()
	}
	for c := range r.conns {
		_ = c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}
