package wshub_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/wshub/wshub"
	"github.com/wshub/wshub/backplane/memory"
)

// userParam authenticates by query parameter. A real application reads its
// session cookie or token here.
func userParam(r *http.Request) (string, error) {
	return r.URL.Query().Get("user"), nil
}

// Two nodes on one in-memory bus: a message sent on node B reaches a user
// whose socket is on node A.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	bus := memory.NewBus()
	bpA, _ := bus.NewNode("a")
	bpB, _ := bus.NewNode("b")
	defer bpA.Close()
	defer bpB.Close()

	hubA, _ := wshub.New(&wshub.Options{Backplane: bpA, Authenticate: userParam})
	hubB, _ := wshub.New(&wshub.Options{Backplane: bpB, Authenticate: userParam})
	defer hubB.Close(ctx)
	defer hubA.Close(ctx)
	srvA := httptest.NewServer(hubA) // an existing server would mux.Handle("/ws", hubA)
	defer srvA.Close()

	conn, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srvA.URL, "http")+"?user=alice", nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer conn.CloseNow()

	if err := hubB.Send(ctx, "alice", wshub.Text("hello from node b")); err != nil {
		fmt.Println(err)
		return
	}
	_, data, _ := conn.Read(ctx)
	fmt.Println(string(data))
	// Output: hello from node b
}

// Sessions join topics (rooms); a message one member sends is relayed to the
// others on every node.
func ExampleHub_Broadcast() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hub, _ := wshub.New(&wshub.Options{
		Authenticate: userParam,
		OnConnect: func(ctx context.Context, s *wshub.Session) error {
			return s.Join(ctx, "lobby")
		},
		OnMessage: func(ctx context.Context, s *wshub.Session, m wshub.Message) {
			relay := wshub.Text(s.UserID() + ": " + string(m.Data))
			_ = s.Hub().Broadcast(ctx, "lobby", relay, wshub.Except(s.ID()))
		},
	})
	defer hub.Close(ctx)
	srv := httptest.NewServer(hub)
	defer srv.Close()
	url := "ws" + strings.TrimPrefix(srv.URL, "http") + "?user="

	bob, _, _ := websocket.Dial(ctx, url+"bob", nil)
	defer bob.CloseNow()
	alice, _, _ := websocket.Dial(ctx, url+"alice", nil)
	defer alice.CloseNow()

	_ = alice.Write(ctx, websocket.MessageText, []byte("hi all"))
	_, data, _ := bob.Read(ctx)
	fmt.Println(string(data))
	// Output: alice: hi all
}

// SendSession answers exactly the session a request came from, whichever
// node holds it.
func ExampleHub_SendSession() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var hub *wshub.Hub
	hub, _ = wshub.New(&wshub.Options{
		OnMessage: func(ctx context.Context, s *wshub.Session, m wshub.Message) {
			// Hand the job to a worker; it replies to the session by ID.
			sessionID := s.ID()
			go func() {
				_ = hub.SendSession(context.Background(), sessionID, wshub.Text("done: "+string(m.Data)))
			}()
		},
	})
	defer hub.Close(ctx)
	srv := httptest.NewServer(hub)
	defer srv.Close()

	conn, _, _ := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	defer conn.CloseNow()
	_ = conn.Write(ctx, websocket.MessageText, []byte("job 7"))
	_, data, _ := conn.Read(ctx)
	fmt.Println(string(data))
	// Output: done: job 7
}

// Presence across two nodes: who is online anywhere, and who is in a room,
// asked of a node that holds neither session.
func ExampleHub_Online() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	bus := memory.NewBus()
	bpA, _ := bus.NewNode("a")
	bpB, _ := bus.NewNode("b")
	defer bpA.Close()
	defer bpB.Close()
	join := func(ctx context.Context, s *wshub.Session) error { return s.Join(ctx, "room") }
	hubA, _ := wshub.New(&wshub.Options{Backplane: bpA, Authenticate: userParam, OnConnect: join})
	hubB, _ := wshub.New(&wshub.Options{Backplane: bpB})
	defer hubB.Close(ctx)
	defer hubA.Close(ctx)
	srv := httptest.NewServer(hubA)
	defer srv.Close()
	url := "ws" + strings.TrimPrefix(srv.URL, "http") + "?user="
	for _, user := range []string{"alice", "bob", "bob"} {
		conn, _, err := websocket.Dial(ctx, url+user, nil)
		if err != nil {
			fmt.Println(err)
			return
		}
		defer conn.CloseNow()
	}

	// Once a handshake completes, every node counts the session.
	n, _ := hubB.Online(ctx, "bob")
	fmt.Println("bob's sessions:", n)
	n, _ = hubB.Online(ctx, "carol")
	fmt.Println("carol's sessions:", n)
	count, _ := hubB.TopicCount(ctx, "room")
	members, next, _ := hubB.TopicMembers(ctx, "room", "", 100)
	fmt.Println("in the room:", count, members, next == "")
	// Output:
	// bob's sessions: 2
	// carol's sessions: 0
	// in the room: 2 [{alice 1} {bob 2}] true
}
