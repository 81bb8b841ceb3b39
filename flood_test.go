package wshub

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Bounds of the flood in TestFloodingClientIsBackPressured: whichever comes
// first ends it, unless the test ends it before. They bound the test; they
// are not measures.
const (
	relayFloodMessages = 200_000
	relayFloodFor      = 30 * time.Second // far above what serving the pings takes, even on a loaded machine
)

// The flood test's node queues at most relayFloodQueue messages: a bound
// smaller than the default keeps each wait behind the flood short under the
// race detector. What matters is that there is one.
const relayFloodQueue = 512

// relayFloodHeapBound is how much the live heap may grow while one client
// floods the room. A node whose backplane queue is unbounded keeps every
// relayed message its handler has not reached: 42 to 75 MiB were measured.
// A bounded one keeps at most relayFloodQueue of them: the growth measured
// was under 16 MiB, nearly all of it the hub's, not the backplane's.
const relayFloodHeapBound = 32 << 20

// TestFloodingClientIsBackPressured floods a 100-member room from one client
// whose every message the application relays with Broadcast. The memory
// backplane must push back on the flooder (its Broadcast waits, so the hub
// reads it no faster than the node delivers), so that the node's memory
// stays bounded and other clients are still served while the flood goes on.
func TestFloodingClientIsBackPressured(t *testing.T) {
	const members, behaved, pings = 100, 3, 10
	c := newCluster(t, 1, func(_ int, o *Options) {
		o.SlowPolicy = SlowDropOldest
		o.SendQueueLen = 16 // what the hub keeps for members that do not read
		// The flooder's rate limits would hold it back before the
		// backplane does; this is the backplane's back-pressure.
		o.Limits.FramesPerSecond, o.Limits.BytesPerSecond = -1, -1
		o.OnConnect = func(ctx context.Context, s *Session) error {
			if strings.HasPrefix(s.UserID(), "member") {
				return s.Join(ctx, "room")
			}
			return nil
		}
		o.OnMessage = func(ctx context.Context, s *Session, m Message) {
			// The flood ends by closing the flooder's connection, which
			// ends ctx, or by closing the hub.
			err := s.hub.Broadcast(ctx, "room", m)
			if err != nil && ctx.Err() == nil && !errors.Is(err, ErrClosed) {
				t.Errorf("broadcast: %v", err)
			}
		}
	})
	n := c.nodes[0]
	require.NoError(t, c.bus.SetQueueLimit("node0", relayFloodQueue, 1<<20))

	// A tenth of the members read (and discard), the others never read:
	// SlowDropOldest bounds what the hub keeps for them.
	for i := range members {
		m := dialNoRead(t, n, fmt.Sprintf("member%d", i))
		if i%10 != 0 {
			continue
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				if _, _, err := m.conn.Read(bg); err != nil {
					return
				}
			}
		}()
		t.Cleanup(func() { _ = m.conn.CloseNow(); <-done })
	}
	require.Eventually(t, func() bool {
		return n.hub.reg.count(n.hub.reg.topics, "room") == members
	}, waitFor, time.Millisecond)
	c.waitJoined("member0", "room", true)
	good := make([]*client, behaved)
	for i := range good {
		good[i] = dial(t, n, fmt.Sprintf("good%d", i))
	}
	flooder := dialNoRead(t, n, "flooder")

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	// The flooder writes small messages as fast as the hub reads them, until
	// told to stop or it reaches one of its bounds.
	stop := make(chan struct{})
	floodEnded := make(chan struct{})
	var (
		sent     int
		floodErr error
	)
	go func() {
		defer close(floodEnded)
		ctx, cancel := context.WithTimeout(bg, relayFloodFor)
		defer cancel()
		msg := []byte(strings.Repeat("f", 200))
		for sent < relayFloodMessages {
			err := flooder.conn.Write(ctx, websocket.MessageText, msg)
			select {
			case <-stop:
				return
			default:
			}
			if err != nil {
				if !errors.Is(err, context.DeadlineExceeded) {
					floodErr = err
				}
				return
			}
			sent++
		}
	}()
	endFlood := sync.OnceFunc(func() {
		close(stop)
		_ = flooder.conn.CloseNow()
		<-floodEnded
	})
	defer endFlood()

	// Once the flood is under way, the well-behaved clients are served one
	// after the other, each before the flood ends: none waits behind all of
	// it.
	require.Eventually(t, func() bool { return n.hub.Stats().Received >= 2*relayFloodQueue }, waitFor, time.Millisecond,
		"the flood did not start")
	served := 0
serve:
	for i := range pings {
		ctx, cancel := context.WithTimeout(bg, waitFor)
		err := n.hub.Send(ctx, fmt.Sprintf("good%d", i%behaved), Text(fmt.Sprint("ping ", i)))
		cancel()
		require.NoError(t, err)
		select {
		case m := <-good[i%behaved].msgs:
			assert.Equal(t, fmt.Sprint("ping ", i), string(m.Data))
			served++
		case <-floodEnded:
			break serve
		}
	}

	// Measured right as the flood ends, when a backlog, if there is one, is
	// still there, but the flood's garbage is no longer being made.
	endFlood()
	runtime.GC()
	runtime.GC() // and what the first collection had to keep, made meanwhile
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	growth := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	st, err := c.bus.Stats("node0")
	require.NoError(t, err)
	t.Logf("flood: %d messages sent, %d read by the hub; %d pings served; heap growth %.1f MiB; backplane %+v",
		sent, n.hub.Stats().Received, served, float64(growth)/(1<<20), st)
	require.NoError(t, floodErr)

	assert.Equal(t, pings, served, "pings served before the flood ended")
	assert.Less(t, growth, int64(relayFloodHeapBound), "live heap growth during the flood")
	assert.Positive(t, st.Waits, "the flooder never waited for room")
	// Overshoot: one message per concurrent publisher, the flooder and the
	// test's Send.
	assert.LessOrEqual(t, st.PeakQueued, relayFloodQueue+2, "peak queue")
}
