package wshub

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// drainNode starts one hub whose sessions are recorded by user, and
// connects users user0..user(n-1), each reading in the background.
func drainNode(t *testing.T, n int, tweak func(o *Options)) (*node, *sessionLog, []*client) {
	t.Helper()
	var log sessionLog
	c := newCluster(t, 1, func(_ int, o *Options) {
		o.OnConnect = log.hook
		if tweak != nil {
			tweak(o)
		}
	})
	nd := c.nodes[0]
	clients := make([]*client, n)
	for i := range clients {
		clients[i] = dial(t, nd, fmt.Sprint("user", i))
	}
	require.Eventually(t, func() bool { return nd.hub.Stats().Sessions == n }, waitFor, time.Millisecond)
	return nd, &log, clients
}

// closing counts the sessions that have been asked to close.
func closing(sessions []*Session) int {
	n := 0
	for _, s := range sessions {
		s.mu.Lock()
		if s.closing {
			n++
		}
		s.mu.Unlock()
	}
	return n
}

// upgradeStatus tries an upgrade and returns the HTTP status it got and its
// Retry-After.
func upgradeStatus(t *testing.T, nd *node, user string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(bg, waitFor)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, wsURL(nd.srv)+"/ws?user="+user, nil)
	if err == nil {
		_ = conn.CloseNow()
		return http.StatusSwitchingProtocols, ""
	}
	require.NotNil(t, resp, "%v", err)
	return resp.StatusCode, resp.Header.Get("Retry-After")
}

// Drain takes the node out of service first (readiness fails, upgrades are
// refused), then closes its sessions batch by batch: at each batch, exactly
// the sessions of the earlier batches have been asked to close. Every
// client gets what was queued for it, then 1012.
func TestDrainClosesInBatchesAfterReadinessFails(t *testing.T) {
	const sessions, batch, queued = 18, 4, 20
	nd, log, clients := drainNode(t, sessions, nil)
	all := make([]*Session, sessions)
	for i := range all {
		all[i] = log.get(t, fmt.Sprint("user", i), 0)
	}
	// The hub counts an upgrade once its side of the handshake returns,
	// which the client may see complete a moment before.
	require.Eventually(t, func() bool { return nd.hub.Stats().Accepted == sessions }, waitFor, time.Millisecond)
	accepted := nd.hub.Stats().Accepted

	type seen struct {
		size, closingBefore, ready, upgrade int
		retryAfter                          string
	}
	var batches []seen
	// The hook sees the batches in order, whatever the clock does; the
	// pause is short only to keep the test fast.
	nd.hub.drain.pace = drainPace{batch: batch, pause: time.Millisecond, maxSpread: time.Hour}
	nd.hub.drain.beforeBatch = func(b []*Session) {
		ready, _ := probe(t, nd.hub.ReadinessHandler(), http.MethodGet)
		var up int
		var ra string
		if len(batches) == 0 {
			up, ra = upgradeStatus(t, nd, "newcomer")
		}
		batches = append(batches, seen{size: len(b), closingBefore: closing(all), ready: ready, upgrade: up, retryAfter: ra})
	}
	// Every session has messages queued when the drain begins.
	for _, s := range all {
		for i := 0; i < queued; i++ {
			require.NoError(t, s.Send(Text(fmt.Sprint("m", i))))
		}
	}
	require.NoError(t, nd.hub.Drain(bg))

	require.Len(t, batches, 5, "18 sessions in batches of 4: 4 4 4 4 2")
	asked := 0
	for i, b := range batches {
		assert.Equal(t, min(batch, sessions-asked), b.size, "batch %d", i)
		assert.Equal(t, asked, b.closingBefore, "batch %d: only the earlier batches are closing", i)
		assert.Equal(t, http.StatusServiceUnavailable, b.ready, "batch %d: readiness fails before any close", i)
		asked += b.size
	}
	assert.Equal(t, http.StatusServiceUnavailable, batches[0].upgrade, "an upgrade during the drain")
	assert.Equal(t, "1", batches[0].retryAfter)

	for i, c := range clients {
		for j := 0; j < queued; j++ {
			require.Equal(t, fmt.Sprint("m", j), c.nextText(), "client %d: what was queued comes first", i)
		}
		assert.Equal(t, StatusServiceRestart, c.closed(), "client %d", i)
		var ce websocket.CloseError
		require.ErrorAs(t, c.err, &ce)
		assert.Equal(t, "service restart", ce.Reason)
	}
	// Drain returned once every session had ended.
	assert.Zero(t, nd.hub.Stats().Sessions)
	assert.Equal(t, accepted, nd.hub.Stats().Accepted, "the upgrade during the drain was refused")

	// Still out of service after the drain, until Close.
	code, ra := upgradeStatus(t, nd, "late")
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Equal(t, "1", ra)
	ready, body := probe(t, nd.hub.ReadinessHandler(), http.MethodGet)
	assert.Equal(t, http.StatusServiceUnavailable, ready)
	assert.Equal(t, "draining\n", body)
	require.NoError(t, nd.hub.Close(bg))
	assert.NoError(t, nd.hub.Drain(bg), "a drain after Close has nothing to wait for")
}

// The batch size spreads a large node over the time the context leaves.
func TestDrainBatchSize(t *testing.T) {
	p := drainPace{}.withDefaults()
	tests := []struct {
		name     string
		sessions int
		spread   time.Duration
		want     int
	}{
		{"few sessions go at once", 5, drainMaxSpread, drainBatch},
		{"the smallest batch", 100, drainMaxSpread, drainBatch},
		{"1000 over 5s", 1000, 5 * time.Second, 20},
		{"10000 over 5s", 10000, 5 * time.Second, 200},
		{"a short deadline: one batch", 1000, 50 * time.Millisecond, 1000},
		{"a deadline already past", 1000, -time.Second, 1000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, p.batchSize(tt.sessions, tt.spread))
		})
	}
}

// When ctx ends mid-drain, the sessions not closed yet are closed at once,
// still with 1012, and Drain returns ctx's error.
func TestDrainContextEndsClosesTheRestAtOnce(t *testing.T) {
	const sessions = 6
	nd, _, clients := drainNode(t, sessions, nil)
	ctx, cancel := context.WithCancel(bg)
	defer cancel()
	calls := 0
	nd.hub.drain.pace = drainPace{batch: 1, pause: time.Hour, maxSpread: 1000 * time.Hour}
	nd.hub.drain.beforeBatch = func([]*Session) { calls++; cancel() }

	err := nd.hub.Drain(ctx)
	require.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, 1, calls, "one batch, then the rest at once")
	for i, c := range clients {
		assert.Equal(t, StatusServiceRestart, c.closed(), "client %d", i)
	}
	require.Eventually(t, func() bool { return nd.hub.Stats().Sessions == 0 }, waitFor, time.Millisecond)
	require.NoError(t, nd.hub.Close(bg))
}

// A session whose upgrade was under way when the drain began is closed
// too, once its handshake is done, and Drain waits for it.
func TestDrainWaitsForAnUpgradeUnderWay(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	nd, _, _ := drainNode(t, 0, func(o *Options) {
		o.OnConnect = func(ctx context.Context, s *Session) error {
			if s.UserID() == "slow" {
				close(entered)
				<-release
			}
			return nil
		}
	})
	type result struct {
		conn *websocket.Conn
		err  error
	}
	dialed := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(bg, waitFor)
		defer cancel()
		conn, _, err := websocket.Dial(ctx, wsURL(nd.srv)+"/ws?user=slow", nil)
		dialed <- result{conn, err}
	}()
	<-entered
	drained, issued := make(chan error, 1), make(chan struct{})
	var once sync.Once
	nd.hub.drain.beforeBatch = func([]*Session) { once.Do(func() { close(issued) }) }
	go func() { drained <- nd.hub.Drain(bg) }()
	<-issued
	select {
	case err := <-drained:
		t.Fatalf("Drain returned (%v) while a session was in its upgrade", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)

	r := <-dialed
	require.NoError(t, r.err, "the upgrade under way completes")
	defer r.conn.CloseNow()
	_, _, err := r.conn.Read(bg)
	assert.Equal(t, websocket.StatusServiceRestart, websocket.CloseStatus(err))
	select {
	case err := <-drained:
		require.NoError(t, err)
	case <-time.After(waitFor):
		t.Fatal("Drain did not return")
	}
	assert.Zero(t, nd.hub.Stats().Sessions)
}

// Drain and Close may race: whichever closes a session first sets its
// status, and both return once the sessions have ended.
func TestDrainConcurrentWithClose(t *testing.T) {
	nd, _, clients := drainNode(t, 20, nil)
	nd.hub.drain.pace = drainPace{batch: 1, pause: time.Millisecond, maxSpread: time.Hour}
	errs := make(chan error, 2)
	go func() { errs <- nd.hub.Drain(bg) }()
	go func() { errs <- nd.hub.Close(bg) }()
	for i := 0; i < 2; i++ {
		require.NoError(t, <-errs)
	}
	for i, c := range clients {
		code := c.closed()
		assert.True(t, code == StatusServiceRestart || code == StatusGoingAway, "client %d: %d", i, code)
	}
	assert.ErrorIs(t, nd.hub.Health(), ErrClosed)
}
