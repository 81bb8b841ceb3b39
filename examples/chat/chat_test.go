package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"regexp"
	"slices"
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
	if os.Getenv(childEnv) == "1" {
		main() // a chat node of TestRollingRestart, in its own process
		os.Exit(0)
	}
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
	Type    string   `json:"type"`
	User    string   `json:"user"`
	Node    string   `json:"node"`
	Room    string   `json:"room"`
	From    string   `json:"from"`
	To      string   `json:"to"`
	Text    string   `json:"text"`
	At      string   `json:"at"`
	State   string   `json:"state"`
	Members []string `json:"members"`
	Count   int      `json:"count"`
	Gap     bool     `json:"gap"`
}

// client is a WebSocket client whose messages are read in the background.
// It keeps the member lists of its rooms as the page does: "members" and
// "presence" messages go to them, every other message to msgs.
type client struct {
	t    *testing.T
	name string
	conn *websocket.Conn
	msgs chan []byte
	done chan struct{}
	err  error // why reading stopped, valid after done

	mu      sync.Mutex
	lists   map[string]*memberList // by room
	changed chan struct{}          // signaled when a list changes
}

// memberList is a client's member list of one room: the "members" page,
// with the "presence" messages applied on top of it in the order they
// arrive, those that came before it included.
type memberList struct {
	page  string // the "members" message as sent; empty until it arrives
	pages int    // how many "members" messages came
	users map[string]bool
	more  int     // users in the room not on the page
	early []event // presence messages that came before the page
}

func (l *memberList) apply(p event) {
	switch {
	case p.State == "joined" && l.users[p.User]:
	case p.State == "joined" && len(l.users) < membersPage:
		l.users[p.User] = true
	case p.State == "joined":
		l.more++
	case l.users[p.User]:
		delete(l.users, p.User)
	case l.more > 0:
		l.more--
	}
}

// track applies e to the member lists, reporting whether it is for them.
func (c *client) track(e event, raw []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := c.lists[e.Room]
	if l == nil && (e.Type == "members" || e.Type == "presence") {
		l = &memberList{}
		c.lists[e.Room] = l
	}
	switch e.Type {
	case "members":
		l.page, l.pages = string(raw), l.pages+1
		l.users = make(map[string]bool)
		for _, u := range e.Members {
			l.users[u] = true
		}
		l.more = e.Count - len(e.Members)
		for _, p := range l.early {
			l.apply(p)
		}
		l.early = nil
	case "presence":
		if l.page == "" {
			l.early = append(l.early, e)
		} else {
			l.apply(e)
		}
	case "left":
		delete(c.lists, e.Room)
		return false // it goes to msgs too
	default:
		return false
	}
	select {
	case c.changed <- struct{}{}:
	default:
	}
	return true
}

// members returns the room's member list: its users, sorted, and how many
// more there are; ok is false until the list's page arrived.
func (c *client) members(room string) (users []string, more int, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := c.lists[room]
	if l == nil || l.page == "" {
		return nil, 0, false
	}
	for u := range l.users {
		users = append(users, u)
	}
	slices.Sort(users)
	return users, l.more, true
}

// page returns the room's "members" message as sent, and how many came.
func (c *client) page(room string) (raw string, pages int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if l := c.lists[room]; l != nil {
		return l.page, l.pages
	}
	return "", 0
}

// waitMembers waits until the room's member list is exactly want, with no
// "+N more".
func (c *client) waitMembers(room string, want ...string) {
	c.t.Helper()
	c.waitList(room, 0, want...)
}

// waitList waits until the room's member list is want, plus more.
func (c *client) waitList(room string, more int, want ...string) {
	c.t.Helper()
	want = slices.Sorted(slices.Values(want))
	c.waitUntil(room, fmt.Sprintf("%v +%d", want, more), func(users []string, n int) bool {
		return n == more && slices.Equal(users, want)
	})
}

// waitCount waits until the room's member list counts n users, listed or
// not.
func (c *client) waitCount(room string, n int) {
	c.t.Helper()
	c.waitUntil(room, fmt.Sprintf("%d users", n), func(users []string, more int) bool {
		return len(users)+more == n
	})
}

// waitUntil waits until the room's member list, once its page came, is as
// ok says.
func (c *client) waitUntil(room, want string, ok func(users []string, more int) bool) {
	c.t.Helper()
	deadline := time.After(waitFor)
	ended := false
	for {
		users, more, paged := c.members(room)
		if paged && ok(users, more) {
			return
		}
		if ended {
			c.t.Fatalf("%s: connection ended (%v) with the members of %q %v +%d, want %s", c.name, c.err, room, users, more, want)
		}
		select {
		case <-c.changed:
		case <-c.done:
			ended = true
		case <-deadline:
			c.t.Fatalf("%s: the members of %q are %v +%d (page received: %v), want %s", c.name, room, users, more, paged, want)
		}
	}
}

// close drops the connection at once and waits for its reader to stop.
func (c *client) close() {
	_ = c.conn.CloseNow()
	<-c.done
}

func wsURL(httpURL, name string) string {
	return "ws" + strings.TrimPrefix(httpURL, "http") + "/ws?name=" + url.QueryEscape(name)
}

// dial connects name to the chat at httpURL and checks the greeting: a
// welcome from node, then the lobby.
func dial(t *testing.T, httpURL, name, node string) *client {
	t.Helper()
	c := dialURL(t, wsURL(httpURL, name), name)
	w := c.next()
	require.Equal(t, "welcome", w.Type)
	require.Equal(t, strings.TrimSpace(name), w.User)
	if node != "" {
		require.Equal(t, node, w.Node)
	}
	c.expect(event{Type: "joined", Room: "lobby"})
	return c
}

// dialURL connects to the WebSocket URL u as name, reading in the
// background.
func dialURL(t *testing.T, u, name string) *client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, u, nil)
	require.NoError(t, err)
	c := &client{
		t: t, name: name, conn: conn, msgs: make(chan []byte, 100), done: make(chan struct{}),
		lists: make(map[string]*memberList), changed: make(chan struct{}, 1),
	}
	go func() {
		defer close(c.done)
		for {
			_, data, err := conn.Read(context.Background())
			if err != nil {
				c.err = err
				return
			}
			var e event
			if json.Unmarshal(data, &e) == nil && c.track(e, data) {
				continue
			}
			c.msgs <- data
		}
	}()
	t.Cleanup(func() { _ = conn.CloseNow(); <-c.done })
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
	// A DM is sent only to a user the presence record holds: wait until it
	// holds everyone.
	alice.waitMembers("lobby", "alice", "bob", "carol")

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

	// bob's second join of "go" sent no second member list: it would have
	// come before the messages he received since.
	_, pages := bob.page("go")
	assert.Equal(t, 1, pages)
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

// startCluster serves one chat per node ID, all on one memory bus, as
// processes would run on one Redis.
func startCluster(t *testing.T, ids ...string) map[string]*httptest.Server {
	t.Helper()
	bus := memory.NewBus()
	srvs := map[string]*httptest.Server{}
	for _, id := range ids {
		bp, err := bus.NewNode(id)
		require.NoError(t, err)
		t.Cleanup(func() { assert.NoError(t, bp.Close()) }) // after the chat's cleanup
		srvs[id] = startChat(t, bp, id)
	}
	return srvs
}

// TestTwoNodes runs two chat servers on one memory bus: users on different
// nodes share rooms and DMs.
func TestTwoNodes(t *testing.T) {
	srvs := startCluster(t, "a", "b")
	alice := dial(t, srvs["a"].URL, "alice", "a")
	bob := dial(t, srvs["b"].URL, "bob", "b")
	bob2 := dial(t, srvs["a"].URL, "bob", "a") // bob's second tab, on the other node
	bob.waitMembers("lobby", "alice", "bob")   // alice is online for bob's DM

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

// A room's member list is live on every node: it is sent on join, then kept
// up to date by presence messages as users join and leave, on either node,
// by leaving the room or by disconnecting.
func TestLiveMemberListAcrossNodes(t *testing.T) {
	srvs := startCluster(t, "a", "b")
	alice := dial(t, srvs["a"].URL, "alice", "a")
	alice.waitMembers("lobby", "alice")
	alice.send(`{"type":"join","room":"go"}`)
	alice.expect(event{Type: "joined", Room: "go"})
	alice.waitMembers("go", "alice")

	// bob joins on the other node: both lists have him.
	bob := dial(t, srvs["b"].URL, "bob", "b")
	bob.send(`{"type":"join","room":"go"}`)
	bob.expect(event{Type: "joined", Room: "go"})
	bob.waitMembers("go", "alice", "bob")
	alice.waitMembers("go", "alice", "bob")
	alice.waitMembers("lobby", "alice", "bob")

	// A second tab of bob, on node a, is sent the list as it stands.
	bob2 := dial(t, srvs["a"].URL, "bob", "a")
	bob2.send(`{"type":"join","room":"go"}`)
	bob2.expect(event{Type: "joined", Room: "go"})
	bob2.waitMembers("go", "alice", "bob")
	page, _ := bob2.page("go")
	assert.JSONEq(t, `{"type":"members","room":"go","members":["alice","bob"],"count":2}`, page)

	// bob leaves "go" on node b, but his tab on node a is still in it: he
	// stays listed, and carol, joining on node b, is sent him too.
	bob.send(`{"type":"leave","room":"go"}`)
	bob.expect(event{Type: "left", Room: "go"})
	carol := dial(t, srvs["b"].URL, "carol", "b")
	carol.send(`{"type":"join","room":"go"}`)
	carol.expect(event{Type: "joined", Room: "go"})
	for _, c := range []*client{alice, bob2, carol} {
		c.waitMembers("go", "alice", "bob", "carol")
	}
	page, _ = carol.page("go")
	var e event
	require.NoError(t, json.Unmarshal([]byte(page), &e))
	assert.Subset(t, e.Members, []string{"alice", "bob"}, page) // carol herself may not be in the record yet
	_, _, ok := bob.members("go")
	assert.False(t, ok, "bob's session that left go keeps no list of it")

	// bob's last tab in "go" disconnects: he is gone from the lists on
	// both nodes.
	bob2.close()
	alice.waitMembers("go", "alice", "carol")
	carol.waitMembers("go", "alice", "carol")

	// carol leaves: alice is alone again.
	carol.send(`{"type":"leave","room":"go"}`)
	carol.expect(event{Type: "left", Room: "go"})
	alice.waitMembers("go", "alice")
	alice.waitMembers("lobby", "alice", "bob", "carol")
}

// A room's first list names at most membersPage users and counts the rest;
// the client keeps it live, listing no more than that.
func TestMemberListPage(t *testing.T) {
	srv := startChat(t, nil, "")
	var users []*client
	var names []string
	for i := range membersPage + 1 {
		name := fmt.Sprintf("u%03d", i)
		names = append(names, name)
		users = append(users, dial(t, srv.URL, name, ""))
	}
	// Once the first user counts everyone, the record holds everyone.
	users[0].waitCount("lobby", len(names))

	// A second tab of u000 is sent the first membersPage users, in byte
	// order, and the count of all of them.
	tab := dial(t, srv.URL, "u000", "")
	tab.waitList("lobby", 1, names[:membersPage]...)
	page, _ := tab.page("lobby")
	var e event
	require.NoError(t, json.Unmarshal([]byte(page), &e))
	assert.Equal(t, names[:membersPage], e.Members)
	assert.Equal(t, membersPage+1, e.Count)

	// The count stays live past the page: u100, the one not listed, leaves,
	// and a newcomer joins.
	users[membersPage].close()
	tab.waitList("lobby", 0, names[:membersPage]...)
	dial(t, srv.URL, "zed", "")
	tab.waitList("lobby", 1, names[:membersPage]...)
	// Once a listed user leaves, the next to join is listed.
	users[1].close()
	listed := slices.Delete(slices.Clone(names[:membersPage]), 1, 2) // without u001
	tab.waitList("lobby", 1, listed...)
	dial(t, srv.URL, "yan", "")
	tab.waitList("lobby", 1, append(listed, "yan")...)
}

// A DM to a user who is connected nowhere is not sent: the sender is told
// the user is offline. Once the user connects, DMs are delivered again.
func TestDirectMessageToOfflineUser(t *testing.T) {
	srvs := startCluster(t, "a", "b")
	alice := dial(t, srvs["a"].URL, "alice", "a")
	alice2 := dial(t, srvs["b"].URL, "alice", "b") // another tab of alice's
	alice.waitMembers("lobby", "alice")

	offline := event{Type: "undelivered", To: "bob", Text: "bob is offline; the message was not delivered"}
	alice.send(`{"type":"dm","to":"bob","text":"anyone there?"}`)
	alice.expect(offline)
	// Only the tab that sent it is told; alice2's next message is a later
	// one.
	alice.send(`{"type":"say","room":"lobby","text":"marker"}`)
	marker := event{Type: "message", Room: "lobby", From: "alice", Text: "marker"}
	alice.expect(marker)
	alice2.expect(marker)

	// bob connects on the other node: he gets the DM, and no one is told
	// otherwise.
	bob := dial(t, srvs["b"].URL, "bob", "b")
	alice.waitMembers("lobby", "alice", "bob")
	alice.send(`{"type":"dm","to":"bob","text":"hi"}`)
	dm := event{Type: "dm", From: "alice", To: "bob", Text: "hi"}
	bob.expect(dm)
	alice.expect(dm)
	alice2.expect(dm)

	// bob disconnects: he is offline again, on every node.
	bob.close()
	alice.waitMembers("lobby", "alice")
	alice2.send(`{"type":"dm","to":"bob","text":"come back"}`)
	alice2.expect(offline)
	// A note to oneself is always delivered.
	alice2.send(`{"type":"dm","to":"alice","text":"note"}`)
	note := event{Type: "dm", From: "alice", To: "alice", Text: "note"}
	alice.expect(note)
	alice2.expect(note)
}

// The presence messages are in the chat's wire format, for joins and
// leaves of rooms only.
func TestPresenceMessage(t *testing.T) {
	for kind, want := range map[wshub.PresenceKind]string{
		wshub.PresenceJoined: `{"type":"presence","room":"go","user":"bob","state":"joined"}`,
		wshub.PresenceLeft:   `{"type":"presence","room":"go","user":"bob","state":"left"}`,
	} {
		m, ok := presenceMessage(wshub.PresenceEvent{Kind: kind, UserID: "bob", Topic: "go"})
		require.True(t, ok, kind)
		assert.Equal(t, wshub.MessageText, m.Type)
		assert.JSONEq(t, want, string(m.Data))
	}
	for _, kind := range []wshub.PresenceKind{wshub.PresenceOnline, wshub.PresenceOffline} {
		_, ok := presenceMessage(wshub.PresenceEvent{Kind: kind, UserID: "bob"})
		assert.False(t, ok, kind)
	}
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
			case <-alice.done: // the drain closed her session
				assert.Equal(t, websocket.StatusServiceRestart, websocket.CloseStatus(alice.err))
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
			assert.Contains(t, r.out.String(), "chat draining")
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
	bob.waitMembers("lobby", "alice", "bob") // alice is online for bob's DM

	alice.send(`{"type":"say","room":"lobby","text":"hello from a"}`)
	want := event{Type: "message", Room: "lobby", From: "alice", Text: "hello from a"}
	alice.expect(want)
	bob.expect(want)
	bob.send(`{"type":"dm","to":"alice","text":"hi from b"}`)
	dm := event{Type: "dm", From: "bob", To: "alice", Text: "hi from b"}
	alice.expect(dm)
	bob.expect(dm)

	// alice leaves: bob, on the other process, is told she is offline.
	alice.close()
	bob.waitMembers("lobby", "bob")
	bob.send(`{"type":"dm","to":"alice","text":"still there?"}`)
	bob.expect(event{Type: "undelivered", To: "alice", Text: "alice is offline; the message was not delivered"})
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
