package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/wshub/wshub"
	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/backplane/memory"
	"github.com/wshub/wshub/internal/redistest"
)

func TestMain(m *testing.M) {
	// go-redis's pool finishes a dial it started, with its own retries,
	// in a goroutine that can outlive Client.Close for a moment when the
	// server is gone (the fault tests kill it). It ends by itself.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).queuedNewConn.func2"))
}

// waitFor bounds every wait. It is a failure guard, not a timing assertion:
// a healthy run takes milliseconds.
const waitFor = 10 * time.Second

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// startChat serves a chat on bp (nil for the hub's own) with an httptest
// server, and shuts both down when the test ends.
func startChat(t *testing.T, bp backplane.Backplane, nodeID string) *httptest.Server {
	t.Helper()
	c, err := newChat(bp, nodeID, quiet)
	require.NoError(t, err)
	srv := httptest.NewServer(c)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		assert.NoError(t, c.Close(ctx))
		srv.Close()
	})
	return srv
}

// event is any message the server sends.
type event struct {
	Type string `json:"type"`
	User string `json:"user"`
	Node string `json:"node"`
	Room string `json:"room"`
	From string `json:"from"`
	To   string `json:"to"`
	Text string `json:"text"`
	At   string `json:"at"`
}

// client is a WebSocket client whose messages are read in the background.
type client struct {
	t    *testing.T
	name string
	conn *websocket.Conn
	msgs chan []byte
	done chan struct{}
	err  error // why reading stopped, valid after done
}

func wsURL(httpURL, name string) string {
	return "ws" + strings.TrimPrefix(httpURL, "http") + "/ws?name=" + url.QueryEscape(name)
}

// dial connects name to the chat at httpURL and checks the greeting: a
// welcome from node, then the lobby.
func dial(t *testing.T, httpURL, name, node string) *client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, wsURL(httpURL, name), nil)
	require.NoError(t, err)
	c := &client{t: t, name: name, conn: conn, msgs: make(chan []byte, 100), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for {
			_, data, err := conn.Read(context.Background())
			if err != nil {
				c.err = err
				return
			}
			c.msgs <- data
		}
	}()
	t.Cleanup(func() { _ = conn.CloseNow(); <-c.done })

	w := c.next()
	require.Equal(t, "welcome", w.Type)
	require.Equal(t, strings.TrimSpace(name), w.User)
	if node != "" {
		require.Equal(t, node, w.Node)
	}
	c.expect(event{Type: "joined", Room: "lobby"})
	return c
}

// send sends one raw text message.
func (c *client) send(raw string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(c.t, c.conn.Write(ctx, websocket.MessageText, []byte(raw)))
}

// nextRaw returns the next message as sent by the server.
func (c *client) nextRaw() []byte {
	c.t.Helper()
	select {
	case m := <-c.msgs:
		return m
	case <-c.done:
		select {
		case m := <-c.msgs:
			return m
		default:
		}
		c.t.Fatalf("%s: connection ended while waiting for a message: %v", c.name, c.err)
	case <-time.After(waitFor):
		c.t.Fatalf("%s: no message arrived", c.name)
	}
	return nil
}

func (c *client) next() event {
	c.t.Helper()
	raw := c.nextRaw()
	var e event
	require.NoError(c.t, json.Unmarshal(raw, &e), "%s", raw)
	return e
}

// expect checks the next message. want.At is ignored; a message or dm must
// carry a valid time.
func (c *client) expect(want event) {
	c.t.Helper()
	got := c.next()
	if got.Type == "message" || got.Type == "dm" {
		_, err := time.Parse(time.RFC3339, got.At)
		assert.NoError(c.t, err, "at")
	}
	got.At = ""
	require.Equal(c.t, want, got, c.name)
}

// expectError checks that the next message is an error containing text.
func (c *client) expectError(text string) {
	c.t.Helper()
	got := c.next()
	require.Equal(c.t, "error", got.Type, "%s: %+v", c.name, got)
	require.Contains(c.t, got.Text, text)
}

func TestRoomMessagesAndDirectMessages(t *testing.T) {
	srv := startChat(t, nil, "")
	alice := dial(t, srv.URL, "alice", "")
	alice2 := dial(t, srv.URL, "alice", "") // a second tab of alice
	bob := dial(t, srv.URL, "bob", "")
	carol := dial(t, srv.URL, "carol", "")

	// Everyone in the lobby receives the very same message, the sender too.
	alice.send(`{"type":"say","room":"lobby","text":"hello <everyone> & \"all\""}`)
	raw := alice.nextRaw()
	for _, c := range []*client{alice2, bob, carol} {
		assert.Equal(t, string(raw), string(c.nextRaw()), c.name)
	}
	var e event
	require.NoError(t, json.Unmarshal(raw, &e))
	assert.Equal(t, "message", e.Type)
	assert.Equal(t, "lobby", e.Room)
	assert.Equal(t, "alice", e.From)
	assert.Equal(t, `hello <everyone> & "all"`, e.Text)

	// A DM reaches the recipient and every tab of the sender.
	alice.send(`{"type":"dm","to":"bob","text":"psst"}`)
	want := event{Type: "dm", From: "alice", To: "bob", Text: "psst"}
	bob.expect(want)
	alice.expect(want)
	alice2.expect(want)

	// carol did not get it: the next thing she receives is a later DM to her,
	// published after the one to bob.
	alice.send(`{"type":"dm","to":"carol","text":"marker"}`)
	marker := event{Type: "dm", From: "alice", To: "carol", Text: "marker"}
	carol.expect(marker)
	alice.expect(marker)
	alice2.expect(marker)

	// A DM to oneself arrives once per tab.
	bob.send(`{"type":"dm","to":"bob","text":"note to self"}`)
	bob.expect(event{Type: "dm", From: "bob", To: "bob", Text: "note to self"})
	bob.send(`{"type":"say","room":"lobby","text":"after"}`)
	for _, c := range []*client{alice, alice2, bob, carol} {
		c.expect(event{Type: "message", Room: "lobby", From: "bob", Text: "after"})
	}
}

func TestRooms(t *testing.T) {
	srv := startChat(t, nil, "")
	alice := dial(t, srv.URL, "alice", "")
	bob := dial(t, srv.URL, "bob", "")

	alice.send(`{"type":"join","room":"go"}`)
	alice.expect(event{Type: "joined", Room: "go"})
	bob.send(`{"type":"say","room":"go","text":"hi"}`)
	bob.expectError(`not in room "go"`)

	bob.send(`{"type":"join","room":"go"}`)
	bob.expect(event{Type: "joined", Room: "go"})
	bob.send(`{"type":"say","room":"go","text":"hi"}`)
	alice.expect(event{Type: "message", Room: "go", From: "bob", Text: "hi"})
	bob.expect(event{Type: "message", Room: "go", From: "bob", Text: "hi"})

	// Joining twice is harmless.
	bob.send(`{"type":"join","room":"go"}`)
	bob.expect(event{Type: "joined", Room: "go"})

	alice.send(`{"type":"leave","room":"go"}`)
	alice.expect(event{Type: "left", Room: "go"})
	alice.send(`{"type":"say","room":"go","text":"still here?"}`)
	alice.expectError(`not in room "go"`)
	alice.send(`{"type":"leave","room":"go"}`)
	alice.expectError(`not in room "go"`)

	// alice no longer receives "go": her next message is from the lobby,
	// sent after bob's message to "go".
	bob.send(`{"type":"say","room":"go","text":"bye"}`)
	bob.expect(event{Type: "message", Room: "go", From: "bob", Text: "bye"})
	bob.send(`{"type":"say","room":"lobby","text":"marker"}`)
	alice.expect(event{Type: "message", Room: "lobby", From: "bob", Text: "marker"})
}

func TestInvalidInputGetsAnError(t *testing.T) {
	srv := startChat(t, nil, "")
	alice := dial(t, srv.URL, "alice", "")
	long := strings.Repeat("x", maxTextLen+1)
	longRoom := strings.Repeat("r", maxRoomLen+1)

	tests := []struct {
		name, msg, want string
	}{
		{"invalid JSON", `{"type":`, "invalid JSON"},
		{"not an object", `["say"]`, "invalid JSON"},
		{"missing type", `{"room":"lobby"}`, `missing "type"`},
		{"unknown type", `{"type":"shout","room":"lobby","text":"hi"}`, `unknown type "shout"`},
		{"say without room", `{"type":"say","text":"hi"}`, "missing room"},
		{"say empty text", `{"type":"say","room":"lobby","text":"  "}`, "empty text"},
		{"say over-long text", `{"type":"say","room":"lobby","text":"` + long + `"}`, "text longer than 2000 bytes"},
		{"say in unjoined room", `{"type":"say","room":"elsewhere","text":"hi"}`, `not in room "elsewhere"`},
		{"join without room", `{"type":"join"}`, "missing room"},
		{"join over-long room", `{"type":"join","room":"` + longRoom + `"}`, "room name longer than 64 bytes"},
		{"join room with spaces", `{"type":"join","room":" lobby"}`, "surrounding spaces"},
		{"join room with control character", `{"type":"join","room":"a\u0007b"}`, "control characters"},
		{"leave unjoined room", `{"type":"leave","room":"elsewhere"}`, `not in room "elsewhere"`},
		{"dm without recipient", `{"type":"dm","text":"hi"}`, `"to" must be a user name`},
		{"dm to invalid name", `{"type":"dm","to":"bob smith","text":"hi"}`, `"to" must be a user name`},
		{"dm over-long text", `{"type":"dm","to":"bob","text":"` + long + `"}`, "text longer than 2000 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			alice.t = t
			alice.send(tt.msg)
			alice.expectError(tt.want)
		})
	}

	t.Run("binary message", func(t *testing.T) {
		alice.t = t
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		require.NoError(t, alice.conn.Write(ctx, websocket.MessageBinary, []byte(`{"type":"say"}`)))
		alice.expectError("binary messages are not supported")
	})

	// The session survived it all.
	alice.t = t
	alice.send(`{"type":"say","room":"lobby","text":"still fine"}`)
	alice.expect(event{Type: "message", Room: "lobby", From: "alice", Text: "still fine"})
}

func TestAuthentication(t *testing.T) {
	srv := startChat(t, nil, "")
	for _, name := range []string{"", "   ", "bob smith", "bob!", "zoë", strings.Repeat("a", maxNameLen+1)} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			conn, resp, err := websocket.Dial(ctx, wsURL(srv.URL, name), nil)
			if conn != nil {
				_ = conn.CloseNow()
			}
			require.Error(t, err)
			require.NotNil(t, resp)
			assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
		})
	}
	t.Run("trimmed", func(t *testing.T) {
		dial(t, srv.URL, "  Bob_the-2nd ", "") // checks the welcome names "Bob_the-2nd"
	})
	t.Run("longest", func(t *testing.T) {
		dial(t, srv.URL, strings.Repeat("a", maxNameLen), "")
	})
}

func TestPage(t *testing.T) {
	srv := startChat(t, nil, "")
	resp, err := srv.Client().Get(srv.URL + "/")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "text/html; charset=utf-8", resp.Header.Get("Content-Type"))
	assert.Contains(t, string(body), "<title>wshub chat</title>")

	resp, err = srv.Client().Get(srv.URL + "/nothing")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
}

// TestTwoNodes runs two chat servers on one memory bus, as two processes
// would run on one Redis: users on different nodes share rooms and DMs.
func TestTwoNodes(t *testing.T) {
	bus := memory.NewBus()
	srvs := map[string]*httptest.Server{}
	for _, id := range []string{"a", "b"} {
		bp, err := bus.NewNode(id)
		require.NoError(t, err)
		t.Cleanup(func() { assert.NoError(t, bp.Close()) }) // after the chat's cleanup
		srvs[id] = startChat(t, bp, id)
	}
	alice := dial(t, srvs["a"].URL, "alice", "a")
	bob := dial(t, srvs["b"].URL, "bob", "b")
	bob2 := dial(t, srvs["a"].URL, "bob", "a") // bob's second tab, on the other node

	alice.send(`{"type":"say","room":"lobby","text":"hi from a"}`)
	raw := alice.nextRaw()
	assert.Equal(t, string(raw), string(bob.nextRaw()))
	assert.Equal(t, string(raw), string(bob2.nextRaw()))

	bob.send(`{"type":"join","room":"go"}`)
	bob.expect(event{Type: "joined", Room: "go"})
	alice.send(`{"type":"join","room":"go"}`)
	alice.expect(event{Type: "joined", Room: "go"})
	alice.send(`{"type":"say","room":"go","text":"gophers?"}`)
	want := event{Type: "message", Room: "go", From: "alice", Text: "gophers?"}
	alice.expect(want)
	bob.expect(want)

	bob.send(`{"type":"dm","to":"alice","text":"here"}`)
	dm := event{Type: "dm", From: "bob", To: "alice", Text: "here"}
	alice.expect(dm)
	bob.expect(dm)
	bob2.expect(dm) // bob2 is not in "go": this DM is its next message
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// running is one run of the chat command in the background.
type running struct {
	base   string // http://addr
	out    *syncBuffer
	cancel context.CancelFunc
	done   chan error
}

// startRun runs the chat command with args and waits until it listens.
func startRun(t *testing.T, args ...string) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{out: &syncBuffer{}, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- run(ctx, append([]string{"-addr", "127.0.0.1:0"}, args...), r.out) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(waitFor):
			t.Error("run did not return")
		}
	})
	listening := regexp.MustCompile(`msg="chat listening" addr=(\S+)`)
	require.Eventually(t, func() bool {
		m := listening.FindStringSubmatch(r.out.String())
		if m != nil {
			r.base = "http://" + m[1]
		}
		return m != nil
	}, waitFor, 5*time.Millisecond, "run did not log its address: %s", r.out)
	return r
}

func TestRunServesUntilCanceled(t *testing.T) {
	for _, tt := range []struct{ name, backplane string }{
		{"private backplane", ""},
		{"memory URL", "memory://"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := startRun(t, "-node", "n1", "-backplane", tt.backplane)
			alice := dial(t, r.base, "alice", "n1")
			alice.send(`{"type":"say","room":"lobby","text":"hi"}`)
			alice.expect(event{Type: "message", Room: "lobby", From: "alice", Text: "hi"})

			r.cancel()
			select {
			case <-alice.done:
				assert.Equal(t, websocket.StatusGoingAway, websocket.CloseStatus(alice.err))
			case <-time.After(waitFor):
				t.Fatal("the session was not closed")
			}
			select {
			case err := <-r.done:
				require.NoError(t, err)
				r.done <- err // for the cleanup
			case <-time.After(waitFor):
				t.Fatal("run did not return")
			}
			assert.Contains(t, r.out.String(), "chat stopped")
		})
	}
}

// Two chat processes on one Redis form one chat, as the README shows.
func TestTwoRunsOnRedisFormOneChat(t *testing.T) {
	srv := redistest.Start(t)
	bpURL := "redis://" + srv.Addr() + "/0?prefix=chat-test:"
	a := startRun(t, "-node", "a", "-backplane", bpURL)
	b := startRun(t, "-node", "b", "-backplane", bpURL)
	alice := dial(t, a.base, "alice", "a")
	bob := dial(t, b.base, "bob", "b")

	alice.send(`{"type":"say","room":"lobby","text":"hello from a"}`)
	want := event{Type: "message", Room: "lobby", From: "alice", Text: "hello from a"}
	alice.expect(want)
	bob.expect(want)
	bob.send(`{"type":"dm","to":"alice","text":"hi from b"}`)
	dm := event{Type: "dm", From: "bob", To: "alice", Text: "hi from b"}
	alice.expect(dm)
	bob.expect(dm)
}

func TestRunBadArguments(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want error // nil: any error
	}{
		{"unknown flag", []string{"-nope"}, nil},
		{"extra argument", []string{"now"}, nil},
		{"unknown backplane", []string{"-backplane", "nope://x"}, backplane.ErrUnknownScheme},
		{"bad node ID", []string{"-node", "a.b", "-backplane", "memory://"}, wshub.ErrInvalidOptions},
		{"bad address", []string{"-addr", "127.0.0.1:-1"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := run(context.Background(), tt.args, io.Discard)
			require.Error(t, err)
			if tt.want != nil {
				assert.True(t, errors.Is(err, tt.want), "%v", err)
			}
		})
	}
	require.NoError(t, run(context.Background(), []string{"-h"}, io.Discard))
}
