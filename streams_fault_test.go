package wshub

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/backplane"
	wsredis "github.com/wshub/wshub/backplane/redis"
	"github.com/wshub/wshub/internal/redistest"
)

// In Streams mode a node cut off from Redis misses nothing: when the link
// comes back it catches up from the channel logs, in order, without
// duplicates, and then goes live.
func TestStreamsNodeCatchesUpAfterACut(t *testing.T) {
	srv := redistest.Start(t)
	proxy := redistest.NewProxy(t, srv.Addr())
	var events eventLog
	const total = 10000
	c := redisNodes(t, []string{srv.Addr(), proxy.Addr()}, func(i int, o *Options) {
		o.SendQueueLen = 2 * total
		o.SendQueueBytes = 1 << 26
		o.OnConnect = func(ctx context.Context, s *Session) error { return s.Join(ctx, "room") }
		if i == 1 {
			o.OnBackplaneEvent = events.hook
		}
	}, redisStreams(wsredis.StreamsOptions{Options: wsredis.Options{ProbeInterval: 100 * time.Millisecond}, MaxLen: 2 * total}))
	a, b := c.nodes[0], c.nodes[1]
	cl := dial(t, b, "bob")
	c.waitJoined("bob", "room", true)
	require.NoError(t, a.hub.Send(bg, "bob", Text("u -1")))
	require.Equal(t, "u -1", cl.nextText())

	proxy.Cut()
	require.Eventually(t, func() bool { return events.has(backplane.EventDown, false) }, waitFor, time.Millisecond)
	for i := 0; i < total; i++ {
		var err error
		if i%2 == 0 {
			err = a.hub.Send(bg, "bob", Text(fmt.Sprint("u ", i)))
		} else {
			err = a.hub.Broadcast(bg, "room", Text(fmt.Sprint("t ", i)))
		}
		require.NoError(t, err)
	}
	proxy.Heal()
	require.Eventually(t, func() bool { return events.has(backplane.EventRestored, false) }, waitFor, time.Millisecond,
		"restored without a gap")

	next := map[string]int{"u": 0, "t": 1}
	for n := 0; n < total; n++ {
		kind, num, ok := strings.Cut(cl.nextText(), " ")
		require.True(t, ok)
		i, err := strconv.Atoi(num)
		require.NoError(t, err)
		require.Equal(t, next[kind], i, "%s messages in order, none lost or repeated", kind)
		next[kind] += 2
	}
	// Live again, and nothing more came from the cut.
	require.NoError(t, a.hub.Send(bg, "bob", Text("live")))
	require.Equal(t, "live", cl.nextText())
	require.Zero(t, b.hub.Stats().BackplaneGaps)
	st := b.bp.(*wsredis.Streams).Stats()
	require.GreaterOrEqual(t, st.CaughtUp, uint64(total))
}
