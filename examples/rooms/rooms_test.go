package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/backplane/memory"
	"github.com/wshub/wshub/examples/rooms/internal/stream"
	"github.com/wshub/wshub/internal/redistest"
)

func TestMain(m *testing.M) {
	// go-redis's pool may finish a dial in a goroutine that outlives
	// Client.Close for a moment when the server is gone (a restart).
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).queuedNewConn.func2"))
}

// waitFor bounds every wait; a healthy run takes a fraction of it.
const waitFor = 15 * time.Second

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// node is one instance of the example, served in the test's process: the
// page and the hub on an HTTP server, and the ingest port.
type node struct {
	id     string
	r      *rooms
	srv    *httptest.Server
	ingest string
	bp     backplane.Backplane // closed by kill and the cleanup, when set

	mu     sync.Mutex
	conns  map[net.Conn]struct{} // the HTTP server's, for kill
	killed bool
}

// startNode starts an instance on bp (nil for the hub's own), shut down
// when the test ends. With ownBP the node closes bp after its hub.
func startNode(t *testing.T, bp backplane.Backplane, id string, ownBP bool) *node {
	t.Helper()
	r, err := newRooms(bp, id, quiet)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	r.serveIngest(ln)
	n := &node{id: id, r: r, ingest: ln.Addr().String(), conns: make(map[net.Conn]struct{})}
	if ownBP {
		n.bp = bp
	}
	n.srv = httptest.NewUnstartedServer(r)
	n.srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		n.mu.Lock()
		defer n.mu.Unlock()
		switch s {
		case http.StateNew:
			n.conns[c] = struct{}{}
		case http.StateClosed:
			delete(n.conns, c)
		}
	}
	n.srv.Start()
	t.Cleanup(func() {
		n.mu.Lock()
		killed := n.killed
		n.mu.Unlock()
		if killed {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		assert.NoError(t, r.Close(ctx))
		n.srv.Close()
		if n.bp != nil {
			assert.NoError(t, n.bp.Close())
		}
	})
	return n
}

// kill ends the instance as a crash would: every connection is cut without
// a close frame, then what is left is torn down.
func (n *node) kill() error {
	n.mu.Lock()
	if n.killed {
		n.mu.Unlock()
		return nil
	}
	n.killed = true
	n.srv.Listener.Close()
	for c := range n.conns {
		_ = c.Close()
	}
	n.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // no graceful close
	err := n.r.Close(ctx)
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	n.srv.Close()
	if n.bp != nil {
		err = errors.Join(err, n.bp.Close())
	}
	return err
}

// openRedis opens a pub/sub backplane node on srv.
func openRedis(t *testing.T, srv *redistest.Server) backplane.Backplane {
	t.Helper()
	bp, err := backplane.Open(context.Background(), srv.URL()+"?mode=pubsub&probe_interval=250ms", backplane.WithLogger(quiet))
	require.NoError(t, err)
	return bp
}

// viewer is a WebSocket client in a room; its frames arrive on frames once
// it reads.
type viewer struct {
	conn    *websocket.Conn
	welcome notice
	frames  chan []byte
	read    chan struct{} // closed to start reading frames
	once    sync.Once
}

// watch connects a viewer to room on n. A rcvbuf above 0 bounds its
// socket's receive buffer, so that a viewer that does not read fills up
// fast. It reads once start is called.
func watch(t *testing.T, n *node, name, room string, rcvbuf int) *viewer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err == nil && rcvbuf > 0 {
			err = c.(*net.TCPConn).SetReadBuffer(rcvbuf)
		}
		return c, err
	}}
	t.Cleanup(tr.CloseIdleConnections)
	u := "ws" + strings.TrimPrefix(n.srv.URL, "http") + "/ws?name=" + name + "&room=" + room
	conn, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}})
	require.NoError(t, err)
	conn.SetReadLimit(1 << 20)
	v := &viewer{conn: conn, frames: make(chan []byte, 10000), read: make(chan struct{})}
	typ, b, err := conn.Read(ctx)
	require.NoError(t, err)
	require.Equal(t, websocket.MessageText, typ)
	require.NoError(t, json.Unmarshal(b, &v.welcome))
	require.Equal(t, "welcome", v.welcome.Type)
	require.Equal(t, n.id, v.welcome.Node)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(v.frames)
		<-v.read
		for {
			typ, b, err := conn.Read(context.Background())
			if err != nil {
				return
			}
			if typ == websocket.MessageBinary {
				v.frames <- b
			}
		}
	}()
	t.Cleanup(func() {
		v.start()
		_ = conn.CloseNow()
		<-done
	})
	return v
}

func (v *viewer) start() { v.once.Do(func() { close(v.read) }) }

// until reads frames until one numbered last, and returns them all.
func (v *viewer) until(t *testing.T, last uint32) [][]byte {
	t.Helper()
	v.start()
	var got [][]byte
	deadline := time.After(waitFor)
	for {
		select {
		case f, ok := <-v.frames:
			require.True(t, ok, "connection ended after %d frames", len(got))
			got = append(got, f)
			if seq, _ := stream.Seq(f); seq == last {
				return got
			}
		case <-deadline:
			t.Fatalf("frame %d did not arrive in %v; %d frames did", last, waitFor, len(got))
		}
	}
}

// streamFrames streams n frames into room through ingest, at fps, and
// returns when they are sent.
func streamFrames(t *testing.T, ingest, room string, n, fps int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	s := &stream.Streamer{Addrs: []string{ingest}, Room: room, FPS: fps, Frames: n, Logger: quiet}
	require.NoError(t, s.Run(ctx))
}

// requireAll checks that got is exactly frames 0 to n-1 of the default
// stream, byte for byte.
func requireAll(t *testing.T, who string, got [][]byte, n int) {
	t.Helper()
	require.Len(t, got, n, "%s: frames received", who)
	for i, f := range got {
		if want := stream.Generate(uint32(i), stream.DefaultWidth, stream.DefaultHeight); !bytes.Equal(f, want) {
			seq, _ := stream.Seq(f)
			t.Fatalf("%s: frame %d is not the frame sent (seq %d, %d bytes, want %d)", who, i, seq, len(f), len(want))
		}
	}
}

// Viewers on two instances receive every frame the streamer sends to one
// instance's ingest port, byte for byte and in order, on memory and on
// Redis pub/sub.
func TestFramesByteForByte(t *testing.T) {
	const frames = 60
	for _, tc := range []struct {
		name  string
		nodes func(t *testing.T) (a, b *node)
	}{
		{"memory", func(t *testing.T) (a, b *node) {
			bus := memory.NewBus()
			na, err := bus.NewNode("n1")
			require.NoError(t, err)
			nb, err := bus.NewNode("n2")
			require.NoError(t, err)
			return startNode(t, na, "n1", true), startNode(t, nb, "n2", true)
		}},
		{"redis", func(t *testing.T) (a, b *node) {
			srv := redistest.Start(t)
			return startNode(t, openRedis(t, srv), "n1", true), startNode(t, openRedis(t, srv), "n2", true)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n1, n2 := tc.nodes(t)
			a := watch(t, n1, "A", "demo", 0)
			b := watch(t, n2, "B", "demo", 0)
			a.start()
			b.start()
			// Into the ingest of the node where A is: B's frames cross
			// the backplane.
			streamFrames(t, n1.ingest, "demo", frames, 50)
			requireAll(t, "A on n1", a.until(t, frames-1), frames)
			requireAll(t, "B on n2", b.until(t, frames-1), frames)
			assert.EqualValues(t, frames, n1.r.frames.Load(), "frames broadcast by n1's ingest")
			assert.Zero(t, n1.r.hub.Stats().Dropped+n2.r.hub.Stats().Dropped, "frames dropped")
		})
	}
}

// A viewer that stops reading loses its oldest frames and holds up nobody:
// the viewer beside it on the same instance and one on another instance
// receive every frame, while the stalled one's queue overflows, and once
// it reads again it gets the newest frame, not a backlog of all of them.
// It counts frames, not time.
func TestStalledViewer(t *testing.T) {
	const frames = 150
	bus := memory.NewBus()
	na, err := bus.NewNode("n1")
	require.NoError(t, err)
	nb, err := bus.NewNode("n2")
	require.NoError(t, err)
	n1, n2 := startNode(t, na, "n1", true), startNode(t, nb, "n2", true)

	// S never reads until the end. Its receive buffer is bounded, so that
	// the hub's queue for it overflows within a few dozen frames; 64 KiB,
	// not less: below loopback's MSS the kernel's window updates lag, and
	// catching up at the end would take seconds.
	stalled := watch(t, n1, "S", "demo", 64<<10)
	a := watch(t, n1, "A", "demo", 0)
	b := watch(t, n2, "B", "demo", 0)
	a.start()
	b.start()
	streamFrames(t, n2.ingest, "demo", frames, 50)

	requireAll(t, "A beside the stalled viewer", a.until(t, frames-1), frames)
	requireAll(t, "B on the other node", b.until(t, frames-1), frames)
	dropped := n1.r.hub.Stats().Dropped
	assert.Positive(t, dropped, "frames n1 dropped for the stalled viewer")
	assert.Zero(t, n2.r.hub.Stats().Dropped, "frames n2 dropped")

	t0 := time.Now()
	got := stalled.until(t, frames-1)
	caughtUp := time.Since(t0)
	assert.Less(t, len(got), frames, "the stalled viewer got every frame: nothing was dropped")
	assert.LessOrEqual(t, uint64(len(got))+dropped, uint64(frames), "frames received plus dropped")
	prev := -1
	for _, f := range got {
		seq, _ := stream.Seq(f)
		require.Greater(t, int(seq), prev, "frames out of order")
		prev = int(seq)
		require.Equal(t, stream.Generate(seq, stream.DefaultWidth, stream.DefaultHeight), f, "frame %d", seq)
	}
	t.Logf("stalled viewer: %d of %d frames received, %d dropped by its node; caught up in %v", len(got), frames, dropped, caughtUp)
}

// The ingest port refuses a stream that names no valid room, and a record
// larger than a frame ends the stream.
func TestIngestRefuses(t *testing.T) {
	n := startNode(t, nil, "n1", false)
	for _, tc := range []struct {
		name    string
		records [][]byte
	}{
		{"bad room", [][]byte{[]byte("no spaces allowed"), stream.Generate(0, 8, 8)}},
		{"huge frame", [][]byte{[]byte("demo"), make([]byte, stream.MaxRecord+1)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", n.ingest)
			require.NoError(t, err)
			defer c.Close()
			for _, r := range tc.records {
				if err := stream.WriteRecord(c, r); err != nil {
					break // already closed
				}
			}
			_ = c.SetReadDeadline(time.Now().Add(waitFor))
			_, err = c.Read(make([]byte, 1))
			assert.Error(t, err, "the ingest kept the connection open")
			assert.Zero(t, n.r.frames.Load())
		})
	}
}
