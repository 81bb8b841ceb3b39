package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wshub/wshub"
	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/examples/internal/webclient"
	"github.com/wshub/wshub/metrics"
)

// Limits on what a client may send.
const (
	maxNameLen = 32   // bytes of a user name
	maxRoomLen = 64   // bytes of a room name
	maxTextLen = 2000 // bytes of a message's text
	maxRooms   = 32   // rooms one session may be in
	// readLimit is the largest WebSocket message a client may send; a
	// larger one closes the session with status 1009. A text of maxTextLen
	// bytes fits even when every byte is escaped in JSON.
	readLimit = 16 << 10
	// joinTimeout bounds the wait for the backplane to confirm a join.
	joinTimeout = 10 * time.Second
	// membersPage is how many members of a room a client is sent when it
	// joins; the rest are counted ("+N more").
	membersPage = 100
	// presenceSettle is how long after its backplane is restored a node
	// does not take "connected nowhere" for an answer: a Redis that
	// restarted lost the presence record, and each node writes its
	// sessions again within one refresh (a third of the presence time to
	// live, 10s by default).
	presenceSettle = 10 * time.Second
)

// lobby is the room every session joins when it connects.
const lobby = "lobby"

//go:embed index.html
var indexHTML []byte

// errDelivery is what a client is told when the hub could not take a message,
// typically because the backplane is unavailable; the log has the cause.
var errDelivery = errors.New("the message could not be sent, try again")

// inbound is a message from a client.
type inbound struct {
	Type string `json:"type"`
	Room string `json:"room"`
	To   string `json:"to"`
	Text string `json:"text"`
}

// outbound is a message to a client; empty fields are left out.
type outbound struct {
	Type    string   `json:"type"`
	User    string   `json:"user,omitempty"` // welcome, presence
	Node    string   `json:"node,omitempty"` // welcome
	Room    string   `json:"room,omitempty"`
	From    string   `json:"from,omitempty"`
	To      string   `json:"to,omitempty"`
	Text    string   `json:"text,omitempty"`
	At      string   `json:"at,omitempty"`
	State   string   `json:"state,omitempty"`   // presence: "joined" or "left"; backplane: "down" or "restored"
	Gap     bool     `json:"gap,omitempty"`     // backplane: messages may have been missed
	Members []string `json:"members,omitempty"` // members: the first page
	Count   int      `json:"count,omitempty"`   // members: users in the room
}

// chat is the application: an http.Handler serving the page at /, its
// client at /wshub.js and the hub at /ws. It starts no goroutine of its own;
// the hub does the work.
type chat struct {
	hub *wshub.Hub
	log *slog.Logger
	mux *http.ServeMux

	// The node's link to the backplane, as the hub reports it, and the
	// sessions to tell when it changes: the sessions of this node, since
	// the change is this node's. mu is held while they are told, so that
	// each session hears the changes in order, after its welcome.
	mu       sync.Mutex
	down     bool
	restored time.Time // when the link last came back
	sessions map[*wshub.Session]struct{}
}

// newChat returns a chat on a new hub. bp may be nil for the hub's private
// in-memory backplane, nodeID empty for a random one. The caller closes the
// chat with Close, and then bp.
func newChat(bp backplane.Backplane, nodeID string, log *slog.Logger) (*chat, error) {
	c := &chat{log: log, mux: http.NewServeMux(), sessions: make(map[*wshub.Session]struct{})}
	hub, err := wshub.New(&wshub.Options{
		Backplane:    bp,
		NodeID:       nodeID,
		Authenticate: authenticate,
		OnConnect:    c.onConnect,
		OnMessage:    c.onMessage,
		OnDisconnect: c.onDisconnect,
		// The page says "offline" from what the server knows, not only
		// from the state of its socket: a node cut off from Redis keeps
		// its sockets open but cannot deliver across the cluster.
		OnBackplaneEvent: c.onBackplaneEvent,
		// The hub broadcasts this to a room when a user first joins it or
		// last leaves it, once cluster-wide: the member lists stay live.
		PresenceMessage: presenceMessage,
		ReadLimit:       readLimit,
		// The limits to start from (these are the defaults, spelled out):
		// a user's tabs, a busy typist's frames, and what one socket may send.
		Limits: wshub.Limits{
			SessionsPerUser:  100,
			TopicsPerSession: 1024,
			FramesPerSecond:  200,
			FrameBurst:       400,
			BytesPerSecond:   1 << 20,
			ByteBurst:        4 << 20,
			RatePolicy:       wshub.RateDelay,
		},
		Logger: log,
	})
	if err != nil {
		return nil, err
	}
	// The callbacks above only run once the hub serves a request, which is
	// after this assignment.
	c.hub = hub
	c.mux.HandleFunc("GET /{$}", serveIndex)
	c.mux.Handle("GET /wshub.js", webclient.Handler())
	c.mux.Handle("/ws", hub)
	c.mountOps()
	return c, nil
}

// mountOps mounts the endpoints for operations, next to the chat: a load
// balancer or Kubernetes probes them (see wshub.Hub.ReadinessHandler and
// LivenessHandler). A production server may serve them on a port of their
// own instead, out of the public's reach.
func (c *chat) mountOps() {
	// Liveness: 200 until the hub is closed, even while Redis is down.
	c.mux.Handle("GET /healthz", c.hub.LivenessHandler())
	// Readiness: 503 while the backplane cannot deliver, and from the
	// start of a drain.
	c.mux.Handle("GET /readyz", c.hub.ReadinessHandler())
	// Prometheus: the hub's metrics (see package metrics) and the Go
	// runtime's, on a registry of the chat's own.
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewCollector(c.hub), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	c.mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
}

func (c *chat) ServeHTTP(w http.ResponseWriter, r *http.Request) { c.mux.ServeHTTP(w, r) }

// Drain takes the node out of service before a restart: readiness fails
// and the sessions are closed in batches with 1012, for their clients to
// resume on another node; see wshub.Hub.Drain.
func (c *chat) Drain(ctx context.Context) error { return c.hub.Drain(ctx) }

// Close closes the hub gracefully; see wshub.Hub.Close.
func (c *chat) Close(ctx context.Context) error { return c.hub.Close(ctx) }

func serveIndex(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	_, _ = w.Write(indexHTML)
}

// authenticate takes the user name from the "name" query parameter: 1 to 32
// letters, digits, '-' or '_', after trimming spaces.
//
// This is a demo: anyone can claim any name. A real application
// authenticates the upgrade request with its session cookie or a token, and
// returns the user ID it belongs to.
func authenticate(r *http.Request) (string, error) {
	name := strings.TrimSpace(r.URL.Query().Get("name"))
	if !validName(name) {
		return "", fmt.Errorf("invalid name %q", name)
	}
	return name, nil
}

func validName(name string) bool {
	if name == "" || len(name) > maxNameLen {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

func checkRoom(room string) error {
	switch {
	case room == "":
		return errors.New("missing room")
	case len(room) > maxRoomLen:
		return fmt.Errorf("room name longer than %d bytes", maxRoomLen)
	case strings.TrimSpace(room) != room || strings.ContainsFunc(room, unicode.IsControl):
		return errors.New("room name has surrounding spaces or control characters")
	}
	return nil
}

func checkText(text string) error {
	switch {
	case strings.TrimSpace(text) == "":
		return errors.New("empty text")
	case len(text) > maxTextLen:
		return fmt.Errorf("text longer than %d bytes", maxTextLen)
	}
	return nil
}

// onConnect sends the welcome and joins the rooms the client names with
// "room" query parameters, or the lobby when it names none. A client that
// reconnects names the rooms it was in, so that they are joined before the
// hub resumes them (the hub resumes the channels a session holds once
// OnConnect has run; see "Resume" in the wshub package documentation).
func (c *chat) onConnect(ctx context.Context, s *wshub.Session) error {
	c.log.Info("user connected", "user", s.UserID(), "session", s.ID())
	c.mu.Lock()
	c.sessions[s] = struct{}{}
	c.reply(s, outbound{Type: "welcome", User: s.UserID(), Node: c.hub.NodeID()})
	if c.down {
		c.reply(s, outbound{Type: "backplane", State: "down"})
	}
	c.mu.Unlock()
	rooms := s.Request().URL.Query()["room"]
	if len(rooms) == 0 {
		rooms = []string{lobby}
	}
	for _, room := range rooms {
		err := c.join(ctx, s, room)
		var failed *joinError
		switch {
		case errors.As(err, &failed):
			// Returning the error would close with 1008 (policy
			// violation); this is a transient failure, so ask the
			// client to come back.
			_ = s.Close(wshub.StatusTryAgainLater, "could not join a room")
			return nil
		case err != nil: // a room name the client should not have sent
			c.reply(s, outbound{Type: "error", Text: err.Error()})
		}
	}
	return nil
}

func (c *chat) onDisconnect(s *wshub.Session, err error) {
	c.mu.Lock()
	delete(c.sessions, s)
	c.mu.Unlock()
	c.log.Info("user disconnected", "user", s.UserID(), "session", s.ID(), "status", int(wshub.CloseStatus(err)))
}

// onBackplaneEvent tells this node's sessions that its link to the
// backplane went down or came back, and whether messages may have been
// missed meanwhile. It runs on the backplane's goroutine and must not block:
// Send only queues.
func (c *chat) onBackplaneEvent(e backplane.Event) {
	var msg outbound
	switch e.Kind {
	case backplane.EventDown:
		msg = outbound{Type: "backplane", State: "down"}
	case backplane.EventRestored:
		msg = outbound{Type: "backplane", State: "restored", Gap: e.Gap}
	default:
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.down = e.Kind == backplane.EventDown
	if !c.down {
		c.restored = time.Now()
	}
	for s := range c.sessions {
		c.reply(s, msg)
	}
}

// onMessage handles one client message. Whatever is wrong with it is answered
// with an error message; the session stays open.
func (c *chat) onMessage(ctx context.Context, s *wshub.Session, m wshub.Message) {
	var err error
	var in inbound
	switch {
	case m.Type != wshub.MessageText:
		err = errors.New("binary messages are not supported")
	case json.Unmarshal(m.Data, &in) != nil:
		err = errors.New("invalid JSON: expected an object such as {\"type\":\"say\",\"room\":\"lobby\",\"text\":\"hi\"}")
	default:
		switch in.Type {
		case "join":
			err = c.join(ctx, s, in.Room)
		case "leave":
			err = c.leave(s, in.Room)
		case "say":
			err = c.say(ctx, s, in.Room, in.Text)
		case "dm":
			err = c.dm(ctx, s, in.To, in.Text)
		case "":
			err = errors.New(`missing "type"`)
		default:
			err = fmt.Errorf("unknown type %.40q", in.Type)
		}
	}
	if err != nil {
		c.log.Debug("rejected client message", "user", s.UserID(), "err", err)
		c.reply(s, outbound{Type: "error", Text: err.Error()})
	}
}

// joinError is a join that failed for a cause of the server's, typically
// the backplane; the client may try again.
type joinError struct{ room string }

func (e *joinError) Error() string { return fmt.Sprintf("could not join %q, try again", e.room) }

func (c *chat) join(ctx context.Context, s *wshub.Session, room string) error {
	if err := checkRoom(room); err != nil {
		return err
	}
	topics := s.Topics()
	if !slices.Contains(topics, room) && len(topics) >= maxRooms {
		return fmt.Errorf("too many rooms, leave one first (limit %d)", maxRooms)
	}
	already := s.InTopic(room)
	ctx, cancel := context.WithTimeout(ctx, joinTimeout)
	defer cancel()
	// Join returns once broadcasts to the room reach this session.
	if err := s.Join(ctx, room); err != nil {
		c.log.Warn("join failed", "user", s.UserID(), "room", room, "err", err)
		return &joinError{room}
	}
	c.reply(s, outbound{Type: "joined", Room: room})
	if !already { // the client's list of a room it was in is live already
		c.sendMembers(ctx, s, room)
	}
	return nil
}

// sendMembers sends the session the first page of the room's members and
// their number. They are read after the join, so every change from then on
// comes as a presence message; one the page already holds may come too,
// which is why a client applies presence messages on top of the page even
// when they arrive before it. A list that cannot be read is left out: the
// join stands.
func (c *chat) sendMembers(ctx context.Context, s *wshub.Session, room string) {
	// The count and the page are two reads, not one snapshot. A page that
	// holds the whole room is its own count; past one page, the count is
	// read first, so that the presence messages make up for what changes
	// between the reads (all but a user who joins in between and sorts into
	// the page: the count is then one short).
	n, err := c.hub.TopicCount(ctx, room)
	var page []wshub.Member
	var next string
	if err == nil {
		page, next, err = c.hub.TopicMembers(ctx, room, "", membersPage)
	}
	if err != nil {
		level := slog.LevelWarn
		if errors.Is(err, wshub.ErrNoPresence) {
			level = slog.LevelDebug // a backplane that keeps no presence
		}
		c.log.Log(ctx, level, "member list not sent", "room", room, "err", err)
		return
	}
	names := make([]string, len(page))
	for i, m := range page {
		names[i] = m.UserID
	}
	if next == "" {
		n = len(names)
	}
	c.reply(s, outbound{Type: "members", Room: room, Members: names, Count: max(n, len(names))})
}

// presenceMessage is the hub's Options.PresenceMessage: it tells a room that
// a user joined it (their first session in it, on any node) or left it
// (their last one left or disconnected).
func presenceMessage(ev wshub.PresenceEvent) (wshub.Message, bool) {
	if ev.Kind != wshub.PresenceJoined && ev.Kind != wshub.PresenceLeft {
		return wshub.Message{}, false
	}
	return encode(outbound{Type: "presence", Room: ev.Topic, User: ev.UserID, State: ev.Kind.String()}), true
}

func (c *chat) leave(s *wshub.Session, room string) error {
	if err := checkRoom(room); err != nil {
		return err
	}
	if !s.InTopic(room) {
		return fmt.Errorf("you are not in room %q", room)
	}
	if err := s.Leave(room); err != nil {
		return err
	}
	c.reply(s, outbound{Type: "left", Room: room})
	return nil
}

// say broadcasts to the room. The sender is in the room, so it receives its
// own message like everyone else: every member sees the same order.
func (c *chat) say(ctx context.Context, s *wshub.Session, room, text string) error {
	if err := checkRoom(room); err != nil {
		return err
	}
	if err := checkText(text); err != nil {
		return err
	}
	if !s.InTopic(room) {
		return fmt.Errorf("you are not in room %q, join it first", room)
	}
	msg := encode(outbound{Type: "message", Room: room, From: s.UserID(), Text: text, At: now()})
	if err := c.hub.Broadcast(ctx, room, msg); err != nil {
		c.log.Warn("broadcast failed", "room", room, "err", err)
		return errDelivery
	}
	return nil
}

// dm sends to every session of the recipient and of the sender, so that the
// sender's other tabs show the conversation too. A recipient who is connected
// nowhere is not sent anything: this tab of the sender is told so instead,
// except for a while after the backplane came back (see presenceSettled).
//
// Online reads the cluster's presence record, so this is no delivery
// receipt: a tab that connected a moment ago may not be in the record yet,
// one that just closed may still be, and one whose node was killed is until
// the record drops it (see "Presence" in the wshub package doc).
func (c *chat) dm(ctx context.Context, s *wshub.Session, to, text string) error {
	if !validName(to) {
		return errors.New(`"to" must be a user name: 1-32 letters, digits, '-' or '_'`)
	}
	if err := checkText(text); err != nil {
		return err
	}
	from := s.UserID()
	if to != from { // a note to oneself always has a recipient
		n, err := c.hub.Online(ctx, to)
		switch {
		case errors.Is(err, wshub.ErrNoPresence):
			// The backplane keeps no presence record: send regardless.
		case err != nil:
			c.log.Warn("presence not read", "user", to, "err", err)
			return errDelivery
		case n == 0 && c.presenceSettled():
			c.reply(s, outbound{Type: "undelivered", To: to, Text: to + " is offline; the message was not delivered"})
			return nil
		}
	}
	msg := encode(outbound{Type: "dm", From: from, To: to, Text: text, At: now()})
	err := c.hub.Send(ctx, to, msg)
	if err == nil && to != from {
		err = c.hub.Send(ctx, from, msg)
	}
	if err != nil {
		c.log.Warn("direct message failed", "from", from, "to", to, "err", err)
		return errDelivery
	}
	return nil
}

// presenceSettled reports whether the presence record can be taken at its
// word that a user is connected nowhere: not while this node's link to the
// backplane is down, nor for presenceSettle after it came back, when the
// record may be missing users that are online. The message is sent then.
func (c *chat) presenceSettled() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.down && time.Since(c.restored) > presenceSettle
}

// reply sends v to this session alone.
func (c *chat) reply(s *wshub.Session, v outbound) {
	if err := s.Send(encode(v)); err != nil {
		c.log.Debug("reply not sent", "session", s.ID(), "err", err)
	}
}

func encode(v outbound) wshub.Message {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // outbound holds only strings and an int
	}
	return wshub.Text(string(b))
}

func now() string { return time.Now().UTC().Format(time.RFC3339) }
