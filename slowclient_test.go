package wshub

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// How a slow client reads: at most slowPiece bytes at a time, slowPause
// apart (under 1 MB/s), through a socket whose kernel receive buffer is
// small, so that what the server sends waits in the server's send buffer.
const (
	slowPiece        = 4 << 10
	slowPause        = 5 * time.Millisecond
	slowClientBuffer = 32 << 10
)

// slowConn is a client's socket that the client reads slowly but steadily.
type slowConn struct{ net.Conn }

func (c slowConn) Read(p []byte) (int, error) {
	time.Sleep(slowPause) // the client's pace, not a wait for anything
	return c.Conn.Read(p[:min(len(p), slowPiece)])
}

// dialSmall opens a WebSocket whose socket has a small kernel receive
// buffer, read through wrap.
func dialSmall(t *testing.T, n *node, user string, wrap func(net.Conn) net.Conn) *websocket.Conn {
	t.Helper()
	var d net.Dialer
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if err := nc.(*net.TCPConn).SetReadBuffer(slowClientBuffer); err != nil {
			nc.Close()
			return nil, err
		}
		return wrap(nc), nil
	}}
	t.Cleanup(tr.CloseIdleConnections)
	ctx, cancel := context.WithTimeout(bg, waitFor)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, wsURL(n.srv)+"/ws?user="+user, &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.CloseNow() })
	return conn
}

// Under SlowDropOldest, clients that read slowly but steadily from a room
// flooded far faster than they read stay connected for many WriteTimeouts
// and keep receiving the newest messages, the oldest being dropped, while
// a client that stops reading is closed as a stalled one: counted in
// SlowClosed and WriteTimeouts, with ErrSlowClient in OnDisconnect's error.
func TestSlowButSteadyReaderIsKept(t *testing.T) {
	const (
		writeTimeout = 500 * time.Millisecond
		floodFor     = 6 * writeTimeout // the flood's length bounds the test, it is not measured
		size         = 8 << 10
		perTick      = 5 // every 10 ms: 4 MB/s, some five times what a slow client reads
		maxMessages  = 2000
	)
	var mu sync.Mutex
	gone := map[string]error{}
	c := newCluster(t, 1, func(_ int, o *Options) {
		o.SlowPolicy = SlowDropOldest
		o.WriteTimeout = writeTimeout
		o.PingInterval = writeTimeout / 5 // pings are waited for behind the backlog too
		// A small queue, so that the last message reaches the slow clients
		// soon after the flood.
		o.MaxMessageSize = 64 << 10
		o.SendQueueBytes = 256 << 10
		o.OnConnect = func(ctx context.Context, s *Session) error { return s.Join(ctx, "room") }
		o.OnDisconnect = func(s *Session, err error) {
			mu.Lock()
			gone[s.UserID()] = err
			mu.Unlock()
		}
	})
	n := c.nodes[0]

	// Each slow client checks that what it gets is in order and counts it
	// until the empty message that ends the flood, and reads on (answering
	// pings) until the test ends.
	type slow struct {
		user     string
		got      atomic.Int64
		ended    chan struct{} // the end of the flood arrived
		finished chan struct{} // reading stopped, err says why
		err      error
	}
	var slows []*slow
	for i := 0; i < 2; i++ {
		sl := &slow{user: fmt.Sprint("slow", i), ended: make(chan struct{}), finished: make(chan struct{})}
		conn := dialSmall(t, n, sl.user, func(nc net.Conn) net.Conn { return slowConn{nc} })
		go func() {
			defer close(sl.finished)
			last := -1
			for {
				_, data, err := conn.Read(bg)
				if err != nil {
					sl.err = err
					return
				}
				select {
				case <-sl.ended:
					continue
				default:
				}
				if len(data) == 0 {
					close(sl.ended)
					continue
				}
				i, err := strconv.Atoi(strings.TrimRight(string(data[:16]), " "))
				if err != nil || i <= last {
					sl.err = fmt.Errorf("message %.16q after %d", data, last)
					return
				}
				last = i
				sl.got.Add(1)
			}
		}()
		t.Cleanup(func() { _ = conn.CloseNow(); <-sl.finished })
		slows = append(slows, sl)
	}
	dialSmall(t, n, "stalled", func(nc net.Conn) net.Conn { return nc }) // never read

	pad := strings.Repeat("x", size-16)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	sent := 0
	for start := time.Now(); sent < maxMessages && time.Since(start) < floodFor; {
		<-tick.C
		for j := 0; j < perTick; j++ {
			require.NoError(t, n.hub.Broadcast(bg, "room", Text(fmt.Sprintf("%-16d%s", sent, pad))))
			sent++
		}
	}
	require.NoError(t, n.hub.Broadcast(bg, "room", Text("")))

	for _, sl := range slows {
		select {
		case <-sl.ended:
		case <-sl.finished:
			t.Fatalf("%s stopped reading before the end of the flood: %v", sl.user, sl.err)
		case <-time.After(waitFor):
			t.Fatalf("%s: the end of the flood did not arrive", sl.user)
		}
		assert.Positive(t, sl.got.Load(), sl.user)
		assert.Less(t, sl.got.Load(), int64(sent), "%s read slower than the flood came, so it missed some", sl.user)
	}
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return gone["stalled"] != nil
	}, waitFor, time.Millisecond, "the client that never reads was not closed")
	mu.Lock()
	assert.ErrorIs(t, gone["stalled"], ErrSlowClient)
	for _, sl := range slows {
		assert.NotContains(t, gone, sl.user, "a slow but steady reader was disconnected")
	}
	mu.Unlock()
	st := n.hub.Stats()
	assert.Positive(t, st.Dropped)
	assert.EqualValues(t, 1, st.SlowClosed, "only the client that stopped reading")
	assert.EqualValues(t, 1, st.WriteTimeouts)
	assert.Equal(t, len(slows), st.Sessions)
	t.Logf("sent %d, slow clients got %d and %d, dropped %d", sent, slows[0].got.Load(), slows[1].got.Load(), st.Dropped)
}
