package wshub

import (
	"context"
	"fmt"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/backplane"
	wsredis "github.com/wshub/wshub/backplane/redis"
	"github.com/wshub/wshub/internal/envelope"
	"github.com/wshub/wshub/internal/redistest"
)

// streamsNodes starts n hubs on Streams backplanes on srv; every session
// joins topic "room" in OnConnect.
func streamsNodes(t *testing.T, srv *redistest.Server, n int, bo wsredis.StreamsOptions) *cluster {
	t.Helper()
	prefix := "resume-" + randomHex() + ":"
	return newClusterOn(t, n, func(i int, o *Options) {
		o.SendQueueLen = 4096
		o.OnConnect = func(ctx context.Context, s *Session) error { return s.Join(ctx, "room") }
	}, func(t *testing.T, name string) (backplane.Backplane, func() uint64) {
		client := goredis.NewClient(&goredis.Options{Addr: srv.Addr()})
		t.Cleanup(func() { _ = client.Close() })
		o := bo
		o.Prefix, o.Logger = prefix, quiet
		bp, err := wsredis.NewStreams(client, &o)
		require.NoError(t, err)
		return bp, func() uint64 { return bp.Stats().Received }
	})
}

// dialResume connects user to n with the positions framing, resuming after
// the given heads.
func dialResume(t *testing.T, n *node, user string, since ...string) *client {
	t.Helper()
	q := url.Values{"user": {user}, PositionsParam: {"1"}}
	for _, h := range since {
		q.Add(SinceParam, h)
	}
	ctx, cancel := context.WithTimeout(bg, waitFor)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, wsURL(n.srv)+"/ws?"+q.Encode(), nil)
	require.NoError(t, err)
	conn.SetReadLimit(-1)
	c := &client{t: t, conn: conn, msgs: make(chan Message, 100000), done: make(chan struct{})}
	t.Cleanup(func() { _ = conn.CloseNow() })
	c.startReading()
	return c
}

// nextFramed returns the head and payload of the next message.
func (c *client) nextFramed() (head, payload string) {
	c.t.Helper()
	m := c.next()
	head, payload, ok := strings.Cut(string(m.Data), "\n")
	require.True(c.t, ok, "message without a head: %q", m.Data)
	return head, payload
}

// The main resume test runs on the memory backplane with its logs, and
// once on Redis Streams: what the hub promises must not depend on which
// log it reads.
func TestResumeOnAnotherNodeGetsExactlyWhatWasMissed(t *testing.T) {
	for _, be := range []struct {
		name  string
		nodes func(t *testing.T) *cluster
	}{
		{"memory", func(t *testing.T) *cluster { return logNodes(t, 2, 1000) }},
		{"redis streams", func(t *testing.T) *cluster { return streamsNodes(t, redistest.Start(t), 2, wsredis.StreamsOptions{}) }},
	} {
		t.Run(be.name, func(t *testing.T) { testResumeOnAnotherNode(t, be.nodes(t)) })
	}
}

func testResumeOnAnotherNode(t *testing.T, c *cluster) {
	a, b := c.nodes[0], c.nodes[1]

	first := dialResume(t, a, "alice")
	c.waitJoined("alice", "room", true)
	var last string
	for i := 0; i < 10; i++ {
		require.NoError(t, b.hub.Broadcast(bg, "room", Text(fmt.Sprint(i))))
	}
	for i := 0; i < 10; i++ {
		h, p := first.nextFramed()
		require.Equal(t, fmt.Sprint(i), p)
		require.True(t, strings.HasSuffix(h, " t:room"), "head %q", h)
		last = h
	}
	require.NoError(t, first.conn.Close(websocket.StatusNormalClosure, ""))
	require.Eventually(t, func() bool { return len(a.sessions("alice")) == 0 }, waitFor, time.Millisecond)

	// 500 messages pass while alice is away.
	for i := 10; i < 510; i++ {
		require.NoError(t, b.hub.Broadcast(bg, "room", Text(fmt.Sprint(i))))
	}
	// She comes back on the other node; live traffic goes on meanwhile.
	again := dialResume(t, b, "alice", last)
	live := make(chan error, 1)
	go func() {
		for i := 510; i < 530; i++ {
			if err := a.hub.Broadcast(bg, "room", Text(fmt.Sprint(i))); err != nil {
				live <- err
				return
			}
		}
		live <- nil
	}()
	next := 10
	recovered := false
	prev := last
	for next < 530 {
		h, p := again.nextFramed()
		if strings.HasPrefix(h, "!") {
			require.Equal(t, "!recovered t:room", h, "after %d messages", next)
			require.False(t, recovered, "recovered twice")
			require.GreaterOrEqual(t, next, 510, "recovered before all missed messages came")
			recovered = true
			continue
		}
		require.Equal(t, fmt.Sprint(next), p, "in order, no gap, no duplicate")
		require.Greater(t, h, prev, "offsets grow")
		prev = h
		next++
	}
	if !recovered { // recovery read even the live messages from the log
		h, _ := again.nextFramed()
		require.Equal(t, "!recovered t:room", h)
	}
	require.NoError(t, <-live)
}

func TestResumeTooOldIsNotRecovered(t *testing.T) {
	c := logNodes(t, 1, 10)
	n := c.nodes[0]
	first := dialResume(t, n, "bob")
	c.waitJoined("bob", "room", true)
	require.NoError(t, n.hub.Broadcast(bg, "room", Text("old")))
	h, _ := first.nextFramed()
	require.NoError(t, first.conn.Close(websocket.StatusNormalClosure, ""))
	require.Eventually(t, func() bool { return len(n.sessions("bob")) == 0 }, waitFor, time.Millisecond)
	for i := 0; i < 1000; i++ { // far beyond what the log keeps
		require.NoError(t, n.hub.Broadcast(bg, "room", Text("missed")))
	}

	again := dialResume(t, n, "bob", h, "0000000000000001-0000000000000000 t:elsewhere")
	status := map[string]bool{}
	for len(status) < 2 {
		h, _ := again.nextFramed()
		require.True(t, strings.HasPrefix(h, "!"), "a missed message came: %q", h)
		status[h] = true
	}
	assert.True(t, status["!not-recovered t:room"], "%v", status)
	assert.True(t, status["!not-recovered t:elsewhere"], "a channel the session does not hold: %v", status)
	require.NoError(t, n.hub.Broadcast(bg, "room", Text("live")))
	_, p := again.nextFramed()
	assert.Equal(t, "live", p)
}

func TestPositionsFramingWithoutALog(t *testing.T) {
	c := newCluster(t, 1, func(i int, o *Options) {
		o.OnConnect = func(ctx context.Context, s *Session) error {
			if s.UserID() == "carol" {
				if err := s.Send(Text("welcome")); err != nil {
					return err
				}
			}
			return s.Join(ctx, "room")
		}
	})
	n := c.nodes[0]
	cl := dialResume(t, n, "carol", "0000000000000001-0000000000000000 t:room")
	h, p := cl.nextFramed()
	assert.Equal(t, "", h, "Session.Send has no offset")
	assert.Equal(t, "welcome", p)
	h, _ = cl.nextFramed()
	assert.Equal(t, "!not-recovered t:room", h, "a memory bus keeps no logs by default")
	require.NoError(t, n.hub.Send(bg, "carol", Binary([]byte{0, 1, 2})))
	m := cl.next()
	assert.Equal(t, MessageBinary, m.Type)
	assert.Equal(t, []byte{'\n', 0, 1, 2}, m.Data, "an empty head: no offset")

	plain := dial(t, n, "dave")
	require.NoError(t, n.hub.Send(bg, "dave", Text("as is")))
	assert.Equal(t, "as is", plain.nextText(), "without the parameter, messages are unchanged")
}

// In the batched framing, queued messages travel packed in binary
// WebSocket messages that a client splits into the original ones.
func TestBatchedFraming(t *testing.T) {
	// OnConnect queues everything before the handshake completes, so the
	// writer finds it all queued at once.
	var want []Message
	for i := 0; i < 3000; i++ {
		m := Text(fmt.Sprint("m", i))
		if i%1000 == 999 {
			m = Binary(make([]byte, 100<<10)) // larger than a packed message: alone
		}
		want = append(want, m)
	}
	c := newCluster(t, 1, func(i int, o *Options) {
		o.SendQueueLen = 10000
		o.OnConnect = func(ctx context.Context, s *Session) error {
			for _, m := range want {
				if err := s.Send(m); err != nil {
					return err
				}
			}
			return nil
		}
	})
	ctx, cancel := context.WithTimeout(bg, waitFor)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, wsURL(c.nodes[0].srv)+"/ws?user=erin&"+BatchParam+"=1", nil)
	require.NoError(t, err)
	conn.SetReadLimit(-1)
	defer conn.CloseNow()

	var got []Message
	frames := 0
	for len(got) < len(want) {
		typ, data, err := conn.Read(ctx)
		require.NoError(t, err)
		require.Equal(t, websocket.MessageBinary, typ)
		frames++
		for len(data) > 0 {
			require.GreaterOrEqual(t, len(data), 5)
			size := int(data[0])<<24 | int(data[1])<<16 | int(data[2])<<8 | int(data[3])
			require.LessOrEqual(t, 5+size, len(data))
			got = append(got, Message{Type: MessageType(data[4]), Data: data[5 : 5+size]})
			data = data[5+size:]
		}
	}
	require.Equal(t, len(want), len(got))
	for i := range want {
		assert.Equal(t, want[i].Type, got[i].Type, "message %d", i)
		assert.Equal(t, want[i].Data, got[i].Data, "message %d", i)
	}
	// The small messages shared packed messages; each large one had its own.
	assert.Equal(t, 6, frames, "999 small, a large one, 999 small, a large one, 999 small, a large one")
}

// Recovery respects the send queue's limits, in messages and bytes: a
// client that missed more than its queue holds gets everything, and is not
// taken for a slow client.
func TestResumeLargerThanTheSendQueue(t *testing.T) {
	c := logNodes(t, 1, 1000)
	n := c.nodes[0]
	// The defaults: 256 messages, 4 MiB.
	n.hub.opts.SendQueueLen, n.hub.opts.SendQueueBytes = 256, 4<<20
	first := dialResume(t, n, "gus")
	c.waitJoined("gus", "room", true)
	require.NoError(t, n.hub.Broadcast(bg, "room", Text("start")))
	h, _ := first.nextFramed()
	require.NoError(t, first.conn.Close(websocket.StatusNormalClosure, ""))
	require.Eventually(t, func() bool { return len(n.sessions("gus")) == 0 }, waitFor, time.Millisecond)

	big := strings.Repeat("x", 60<<10)
	const missed = 300
	for i := 0; i < missed; i++ {
		require.NoError(t, n.hub.Broadcast(bg, "room", Text(fmt.Sprint(i, big))))
	}
	again := dialResume(t, n, "gus", h)
	for i := 0; i < missed; i++ {
		_, p := again.nextFramed()
		require.True(t, strings.HasPrefix(p, fmt.Sprint(i, "x")), "message %d", i)
	}
	h, _ = again.nextFramed()
	assert.Equal(t, "!recovered t:room", h)
	assert.Zero(t, n.hub.Stats().SlowClosed)
}

// A broadcast that left the resuming session out (it sent it) is not given
// back to it by recovery either.
func TestRecoveryKeepsExcept(t *testing.T) {
	c := newCluster(t, 1, nil)
	s := c.nodes[0].hub.newSession(httptest.NewRequest("GET", "/", nil), "ivy")
	defer s.cancel()
	defer s.stopHubLink()
	mine := (&envelope.Envelope{Op: envelope.OpTopic, Target: "room", Arg: s.ID(), Payload: []byte("mine")}).Encode()
	other := (&envelope.Envelope{Op: envelope.OpTopic, Target: "room", Arg: "someone-else", Payload: []byte("theirs")}).Encode()
	_, ok := s.recovered("t:room", backplane.Entry{Offset: "a", Payload: mine})
	assert.False(t, ok)
	m, ok := s.recovered("t:room", backplane.Entry{Offset: "b", Payload: other})
	assert.True(t, ok)
	assert.Equal(t, "b t:room\ntheirs", string(m.data))
}
