package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wshub/wshub"
	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/examples/internal/webclient"
	"github.com/wshub/wshub/examples/jobs/internal/work"
	"github.com/wshub/wshub/metrics"
)

const (
	// readLimit is the largest WebSocket message a client may send: a job
	// with the longest ID and input fits even when escaped.
	readLimit = 4 << 10
	// enqueueTimeout bounds the wait for the queue to take a job.
	enqueueTimeout = 5 * time.Second
	maxNameLen     = 32 // bytes of a user name
)

//go:embed index.html
var indexHTML []byte

// inbound is a job as the client sends it.
type inbound struct {
	ID    string `json:"id"`
	Input string `json:"input"`
}

// outbound is a message of the node to a client; the worker's results are
// work.Result. Empty fields are left out.
type outbound struct {
	Type      string `json:"type"`
	User      string `json:"user,omitempty"`      // welcome
	Node      string `json:"node,omitempty"`      // welcome, queued
	ID        string `json:"id,omitempty"`        // queued, rejected, error
	Input     string `json:"input,omitempty"`     // queued
	Backplane string `json:"backplane,omitempty"` // welcome, backplane: "up" or "down"
	Gap       bool   `json:"gap,omitempty"`       // backplane: messages may have been missed
	Error     string `json:"error,omitempty"`     // rejected, error
}

// app is the jobs server: an http.Handler serving the page at /, the client
// module at /wshub.js and the hub at /ws. Jobs that come over a WebSocket go
// to the queue; the workers send the results with Hub.Send.
type app struct {
	hub   *wshub.Hub
	queue work.Queue
	log   *slog.Logger
	mux   *http.ServeMux

	mu       sync.Mutex
	sessions map[*wshub.Session]struct{} // on this node, to tell of the backplane's state
	down     bool                        // the backplane reported down, not yet restored
}

// newApp returns the jobs server on a new hub. bp may be nil for the hub's
// private in-memory backplane, nodeID empty for a random one. The caller
// closes the app with Close, then bp.
func newApp(bp backplane.Backplane, nodeID string, q work.Queue, log *slog.Logger) (*app, error) {
	a := &app{queue: q, log: log, mux: http.NewServeMux(), sessions: map[*wshub.Session]struct{}{}}
	hub, err := wshub.New(&wshub.Options{
		Backplane:        bp,
		NodeID:           nodeID,
		Authenticate:     authenticate,
		OnConnect:        a.onConnect,
		OnMessage:        a.onMessage,
		OnDisconnect:     a.onDisconnect,
		OnBackplaneEvent: a.onBackplaneEvent,
		ReadLimit:        readLimit,
		Logger:           log,
	})
	if err != nil {
		return nil, err
	}
	a.hub = hub
	a.mux.HandleFunc("GET /{$}", serveIndex)
	a.mux.Handle("GET /wshub.js", webclient.Handler())
	a.mux.HandleFunc("GET /favicon.ico", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	a.mux.Handle("/ws", hub)
	a.mux.Handle("GET /healthz", hub.LivenessHandler())
	a.mux.Handle("GET /readyz", hub.ReadinessHandler())
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewCollector(hub), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a.mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return a, nil
}

func (a *app) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.mux.ServeHTTP(w, r) }

// Drain moves the clients to other nodes before a restart; see
// wshub.Hub.Drain.
func (a *app) Drain(ctx context.Context) error { return a.hub.Drain(ctx) }

// Close closes the hub gracefully; see wshub.Hub.Close.
func (a *app) Close(ctx context.Context) error { return a.hub.Close(ctx) }

func serveIndex(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	_, _ = w.Write(indexHTML)
}

// authenticate takes the user name from the "user" query parameter: 1 to 32
// letters, digits, '-' or '_'.
//
// This is a demo: anyone can claim any name. A real application
// authenticates the upgrade request with its session cookie or a token.
func authenticate(r *http.Request) (string, error) {
	name := strings.TrimSpace(r.URL.Query().Get("user"))
	if name == "" || len(name) > maxNameLen || strings.ContainsFunc(name, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_')
	}) {
		return "", fmt.Errorf("invalid user name %q", name)
	}
	return name, nil
}

func (a *app) onConnect(_ context.Context, s *wshub.Session) error {
	a.mu.Lock()
	a.sessions[s] = struct{}{}
	state := "up"
	if a.down {
		state = "down"
	}
	a.mu.Unlock()
	a.reply(s, outbound{Type: "welcome", User: s.UserID(), Node: a.hub.NodeID(), Backplane: state})
	return nil
}

func (a *app) onDisconnect(s *wshub.Session, _ error) {
	a.mu.Lock()
	delete(a.sessions, s)
	a.mu.Unlock()
}

// onBackplaneEvent tells this node's sessions that the backplane (Redis,
// which holds the queue too) went down or came back: while it is down, new
// jobs are refused and results wait in the workers. It must not block nor
// publish: Session.Send only queues, on this node.
func (a *app) onBackplaneEvent(e backplane.Event) {
	msg := outbound{Type: "backplane", Backplane: "up", Gap: e.Gap}
	a.mu.Lock()
	defer a.mu.Unlock()
	switch e.Kind {
	case backplane.EventDown:
		a.down = true
		msg = outbound{Type: "backplane", Backplane: "down"}
	case backplane.EventRestored:
		a.down = false
	default:
		return
	}
	for s := range a.sessions {
		a.reply(s, msg)
	}
}

// onMessage takes a job, {"id":"...","input":"..."}, and queues it for the
// workers. The "queued" answer goes to the user, like the result, so that
// every tab of theirs and a tab that resumes on another node see it; a job
// the queue refused is answered "rejected" to this session, and the client
// may send it again (the queue takes a job ID once).
func (a *app) onMessage(ctx context.Context, s *wshub.Session, m wshub.Message) {
	var in inbound
	if m.Type != wshub.MessageText || json.Unmarshal(m.Data, &in) != nil {
		a.reply(s, outbound{Type: "error", Error: `expected a job such as {"id":"j1","input":"360"}`})
		return
	}
	j := work.Job{ID: in.ID, User: s.UserID(), Input: in.Input, Node: a.hub.NodeID()}
	if err := j.Check(); err != nil {
		a.reply(s, outbound{Type: "error", ID: in.ID, Error: err.Error()})
		return
	}
	qctx, cancel := context.WithTimeout(ctx, enqueueTimeout)
	defer cancel()
	dup, err := a.queue.Enqueue(qctx, j)
	if err != nil {
		a.log.Warn("job not queued", "job", j.ID, "user", j.User, "err", err)
		a.reply(s, outbound{Type: "rejected", ID: j.ID, Error: "the queue is unavailable, the job will be sent again"})
		return
	}
	a.log.Debug("job queued", "job", j.ID, "user", j.User, "again", dup)
	queued := outbound{Type: "queued", ID: j.ID, Input: j.Input, Node: j.Node}
	if err := a.hub.Send(qctx, j.User, encode(queued)); err != nil {
		a.reply(s, queued) // this tab at least
	}
}

// reply sends v to this session alone.
func (a *app) reply(s *wshub.Session, v outbound) {
	if err := s.Send(encode(v)); err != nil && !errors.Is(err, wshub.ErrSessionClosed) {
		a.log.Debug("reply not sent", "session", s.ID(), "err", err)
	}
}

func encode(v outbound) wshub.Message {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // outbound holds only strings and a bool
	}
	return wshub.TextBytes(b)
}
