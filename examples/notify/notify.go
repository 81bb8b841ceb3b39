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
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wshub/wshub"
	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/examples/internal/webclient"
	"github.com/wshub/wshub/metrics"
)

// Limits on what a request may carry.
const (
	maxDeviceLen = 64   // bytes of a device ID
	maxTextLen   = 500  // bytes of a notification's text
	maxBody      = 4096 // bytes of a POST /notify body
	// sendTimeout bounds Send and Online in POST /notify.
	sendTimeout = 5 * time.Second
)

var (
	//go:embed device.html
	deviceHTML []byte
	//go:embed admin.html
	adminHTML []byte
)

// notification is what a device receives for each notification.
type notification struct {
	Type string `json:"type"` // "notification"
	ID   string `json:"id"`   // "<node>-<n>": the sending node and its count
	Text string `json:"text"`
	From string `json:"from"` // the node the request landed on
	At   string `json:"at"`   // RFC 3339, with milliseconds
}

// status is what the node tells its own devices about itself: "welcome"
// when a device connects, "backplane" when the link to the other nodes goes
// down or comes back.
type status struct {
	Type      string `json:"type"`             // "welcome" or "backplane"
	Device    string `json:"device,omitempty"` // welcome
	Node      string `json:"node"`
	Backplane string `json:"backplane"`     // "up" or "down"
	Gap       bool   `json:"gap,omitempty"` // back up, and notifications may have been missed
}

// sendRequest is the body of POST /notify.
type sendRequest struct {
	To   string `json:"to"`
	Text string `json:"text"`
}

// sendResult answers POST /notify.
type sendResult struct {
	ID   string `json:"id"`
	To   string `json:"to"`
	Node string `json:"node"` // the node that sent it
	// Sessions counts the device's sessions anywhere, per the presence
	// record: 0 offline, -1 unknown (the record could not be read).
	Sessions int `json:"sessions"`
	// Kept is true when the backplane keeps a log, so that a device that
	// is offline now and resumes later still gets the notification.
	Kept bool `json:"kept"`
}

// errorResult answers a request that failed.
type errorResult struct {
	Error string `json:"error"`
}

// notifier is one instance of the application: an http.Handler serving the
// device page at /, the admin page at /admin, POST /notify, GET /online,
// the hub at /ws, the browser client at /wshub.js and the endpoints for
// operations. It starts no goroutine of its own; the hub does the work.
type notifier struct {
	hub  *wshub.Hub
	log  *slog.Logger
	mux  *http.ServeMux
	kept bool // the backplane keeps a log (Streams, or a memory bus with logs)

	seq  atomic.Uint64 // notifications sent from this node
	down atomic.Bool   // the backplane link is down

	mu       sync.Mutex
	sessions map[*wshub.Session]struct{} // this node's devices, told about the backplane
}

// newNotifier returns an instance on a new hub. bp may be nil for the hub's
// private in-memory backplane, nodeID empty for a random one; kept says
// that bp keeps a log that devices resume from (see keepsLog). The caller
// closes the instance with Close, and then bp.
func newNotifier(bp backplane.Backplane, nodeID string, kept bool, log *slog.Logger) (*notifier, error) {
	n := &notifier{log: log, mux: http.NewServeMux(), kept: kept, sessions: make(map[*wshub.Session]struct{})}
	hub, err := wshub.New(&wshub.Options{
		Backplane:        bp,
		NodeID:           nodeID,
		Authenticate:     authenticate,
		OnConnect:        n.onConnect,
		OnDisconnect:     n.onDisconnect,
		OnBackplaneEvent: n.onBackplaneEvent,
		ReadLimit:        1024, // a device sends nothing: no room for more
		Logger:           log,
	})
	if err != nil {
		return nil, err
	}
	n.hub = hub
	n.mux.HandleFunc("GET /{$}", servePage(deviceHTML))
	n.mux.HandleFunc("GET /admin", servePage(adminHTML))
	n.mux.HandleFunc("POST /notify", n.serveNotify)
	n.mux.HandleFunc("GET /online", n.serveOnline)
	n.mux.Handle("/ws", hub)
	n.mux.Handle("GET /wshub.js", webclient.Handler())
	n.mountOps()
	return n, nil
}

// mountOps mounts the endpoints for operations, as in the chat example:
// liveness, readiness and Prometheus metrics on a registry of the
// instance's own.
func (n *notifier) mountOps() {
	n.mux.Handle("GET /healthz", n.hub.LivenessHandler())
	n.mux.Handle("GET /readyz", n.hub.ReadinessHandler())
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewCollector(n.hub), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	n.mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
}

func (n *notifier) ServeHTTP(w http.ResponseWriter, r *http.Request) { n.mux.ServeHTTP(w, r) }

// Drain takes the instance out of service before a restart; see
// wshub.Hub.Drain.
func (n *notifier) Drain(ctx context.Context) error { return n.hub.Drain(ctx) }

// Close closes the hub gracefully; see wshub.Hub.Close.
func (n *notifier) Close(ctx context.Context) error { return n.hub.Close(ctx) }

func servePage(page []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		_, _ = w.Write(page)
	}
}

// authenticate takes the device ID from the "device" query parameter.
//
// This is a demo: anyone can claim any device. A real application
// authenticates the device with a token and returns the user (or device)
// ID it belongs to.
func authenticate(r *http.Request) (string, error) {
	id := r.URL.Query().Get("device")
	if !validDevice(id) {
		return "", fmt.Errorf("invalid device %q", id)
	}
	return id, nil
}

// validDevice reports whether id is 1 to 64 letters, digits, '-' or '_'.
func validDevice(id string) bool {
	if id == "" || len(id) > maxDeviceLen {
		return false
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// onConnect greets the device with the node it reached and the state of
// the backplane, and keeps the session to tell it when that changes. A
// device needs no topic: Send reaches every session of its user ID, on
// whichever node they are.
func (n *notifier) onConnect(_ context.Context, s *wshub.Session) error {
	n.mu.Lock()
	n.sessions[s] = struct{}{}
	n.mu.Unlock()
	n.log.Info("device connected", "device", s.UserID(), "session", s.ID())
	return s.Send(encode(status{Type: "welcome", Device: s.UserID(), Node: n.hub.NodeID(), Backplane: n.backplaneState()}))
}

func (n *notifier) onDisconnect(s *wshub.Session, err error) {
	n.mu.Lock()
	delete(n.sessions, s)
	n.mu.Unlock()
	n.log.Info("device disconnected", "device", s.UserID(), "session", s.ID(), "status", int(wshub.CloseStatus(err)))
}

func (n *notifier) backplaneState() string {
	if n.down.Load() || n.hub.Health() != nil {
		return "down"
	}
	return "up"
}

// onBackplaneEvent tells this node's devices that notifications cannot
// reach them (down), or can again (up, with gap set when some sent
// meanwhile may be lost). Session.Send only queues, so this neither
// blocks nor publishes, as the hook must not.
func (n *notifier) onBackplaneEvent(e backplane.Event) {
	st := status{Type: "backplane", Node: n.hub.NodeID(), Backplane: "up", Gap: e.Gap}
	if e.Kind == backplane.EventDown {
		st.Backplane = "down"
	}
	n.down.Store(e.Kind == backplane.EventDown)
	msg := encode(st)
	n.mu.Lock()
	defer n.mu.Unlock()
	for s := range n.sessions {
		_ = s.Send(msg) // a session that just closed is not told
	}
}

// serveNotify sends a notification to a device, wherever it is connected:
// the request may land on any node. It answers with the device's sessions
// anywhere, read from the cluster's presence record after the send, so
// that the sender knows whether anyone received it.
//
// The notification is sent even to a device that is offline: on a
// backplane that keeps a log (Kept), a device that reconnects and resumes
// within the log's retention gets it then. Presence is no delivery
// receipt: a device that connected a moment ago may not be counted yet,
// one whose node was killed is counted until the record drops it.
func (n *notifier) serveNotify(w http.ResponseWriter, r *http.Request) {
	var req sendRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	if err := dec.Decode(&req); err != nil {
		reply(w, http.StatusBadRequest, errorResult{`invalid JSON: expected {"to":"phone-1","text":"..."}`})
		return
	}
	switch req.Text = strings.TrimSpace(req.Text); {
	case !validDevice(req.To):
		reply(w, http.StatusBadRequest, errorResult{`"to" must be a device ID: 1-64 letters, digits, '-' or '_'`})
		return
	case req.Text == "":
		reply(w, http.StatusBadRequest, errorResult{"empty text"})
		return
	case len(req.Text) > maxTextLen:
		reply(w, http.StatusBadRequest, errorResult{fmt.Sprintf("text longer than %d bytes", maxTextLen)})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), sendTimeout)
	defer cancel()
	node := n.hub.NodeID()
	id := fmt.Sprintf("%s-%d", node, n.seq.Add(1))
	msg := encode(notification{Type: "notification", ID: id, Text: req.Text, From: node, At: time.Now().UTC().Format("2006-01-02T15:04:05.000Z07:00")})
	if err := n.hub.Send(ctx, req.To, msg); err != nil {
		n.log.Warn("notification not sent", "to", req.To, "err", err)
		w.Header().Set("Retry-After", "1")
		reply(w, http.StatusServiceUnavailable, errorResult{"not sent: the backplane is unavailable, try again"})
		return
	}
	res := sendResult{ID: id, To: req.To, Node: node, Kept: n.kept}
	sessions, err := n.hub.Online(ctx, req.To)
	switch {
	case errors.Is(err, wshub.ErrNoPresence): // counted as offline
	case err != nil:
		// Sent all the same: a 503 would invite a retry, a duplicate.
		n.log.Warn("presence not read", "device", req.To, "err", err)
		sessions = -1
	}
	res.Sessions = sessions
	reply(w, http.StatusOK, res)
}

// serveOnline answers GET /online?device=ID with the device's sessions
// anywhere: {"device":"phone-1","sessions":1}.
func (n *notifier) serveOnline(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("device")
	if !validDevice(id) {
		reply(w, http.StatusBadRequest, errorResult{"invalid device"})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), sendTimeout)
	defer cancel()
	sessions, err := n.hub.Online(ctx, id)
	if err != nil && !errors.Is(err, wshub.ErrNoPresence) {
		reply(w, http.StatusServiceUnavailable, errorResult{"presence unavailable"})
		return
	}
	reply(w, http.StatusOK, struct {
		Device   string `json:"device"`
		Node     string `json:"node"`
		Sessions int    `json:"sessions"`
	}{id, n.hub.NodeID(), sessions})
}

func reply(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func encode(v any) wshub.Message {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only strings and bools: cannot fail
	}
	return wshub.TextBytes(b)
}
