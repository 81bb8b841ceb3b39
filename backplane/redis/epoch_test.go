package redis_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/backplane"
	wsredis "github.com/wshub/wshub/backplane/redis"
	"github.com/wshub/wshub/internal/redistest"
)

// Tests of what a Streams node is told after its logs were lost, and
// of what it does with messages on its channels that no node published.

// lostLog is how a test makes Redis lose a channel's log while node b is
// cut off.
type lostLog struct {
	name string
	opts []redistest.Option
	lose func(t *testing.T, srv *redistest.Server, rc *goredis.Client, prefix, ch string)
}

var lostLogs = []lostLog{
	{"restart without persistence", nil, func(t *testing.T, srv *redistest.Server, _ *goredis.Client, _, _ string) {
		srv.Kill(t)
		srv.Restart(t)
	}},
	{"failover to a fresh server", []redistest.Option{redistest.WithAppendOnly()}, func(t *testing.T, srv *redistest.Server, _ *goredis.Client, _, _ string) {
		srv.Kill(t)
		require.NoError(t, os.RemoveAll(filepath.Join(srv.Dir(), "appendonlydir")))
		srv.Restart(t)
	}},
	{"FLUSHALL", nil, func(t *testing.T, _ *redistest.Server, rc *goredis.Client, _, _ string) {
		require.NoError(t, rc.FlushAll(bg).Err())
	}},
	{"log key deleted", nil, func(t *testing.T, _ *redistest.Server, rc *goredis.Client, prefix, ch string) {
		n, err := rc.Del(bg, prefix+"log:"+ch).Result()
		require.NoError(t, err)
		require.EqualValues(t, 1, n, "the log key exists under the name the test expects")
	}},
}

// A node cut off while a message is published, whose log Redis then loses,
// reports a gap, however old its position is: nothing depends on clocks.
func TestStreamsLostLogIsAGap(t *testing.T) {
	for _, tc := range lostLogs {
		for _, age := range []time.Duration{0, 3 * time.Second} {
			t.Run(tc.name+"/position "+age.String()+" old", func(t *testing.T) {
				const ch = "c:lost"
				srv := redistest.Start(t, tc.opts...)
				proxy := redistest.NewProxy(t, srv.Addr())
				prefix := "t" + randomHex() + ":"
				o := wsredis.StreamsOptions{Options: wsredis.Options{Prefix: prefix, ProbeInterval: 100 * time.Millisecond}}
				a := newStreamsNode(t, srv.Addr(), o)
				b := newStreamsNode(t, proxy.Addr(), o)
				require.NoError(t, b.Subscribe(bg, ch))
				require.NoError(t, a.Publish(bg, ch, []byte("seen")))
				require.Eventually(t, func() bool { return b.rec.count(ch) == 1 }, streamsWait, 5*time.Millisecond)
				time.Sleep(age) // the position's age, before the loss

				from := len(b.events.all())
				proxy.Cut()
				down := b.events.waitKind(t, backplane.EventDown, from)
				require.NoError(t, a.Publish(bg, ch, []byte("lost")))
				tc.lose(t, srv, srv.Client(t), prefix, ch)
				proxy.Heal()
				restored := b.events.waitKind(t, backplane.EventRestored, down)
				assert.True(t, b.events.all()[restored].Gap, "the log was lost with a message; events %v", b.events.all())
			})
		}
	}
}

// With appendonly, a restart loses nothing: the node catches up and
// reports no gap.
func TestStreamsRestartWithPersistenceIsNoGap(t *testing.T) {
	const ch = "c:kept"
	srv := redistest.Start(t, redistest.WithAppendOnly(), redistest.WithArgs("--appendfsync", "always"))
	proxy := redistest.NewProxy(t, srv.Addr())
	o := wsredis.StreamsOptions{Options: wsredis.Options{Prefix: "t" + randomHex() + ":", ProbeInterval: 100 * time.Millisecond}}
	a := newStreamsNode(t, srv.Addr(), o)
	b := newStreamsNode(t, proxy.Addr(), o)
	require.NoError(t, b.Subscribe(bg, ch, "c:idle"))
	require.NoError(t, a.Publish(bg, ch, []byte("0")))
	require.Eventually(t, func() bool { return b.rec.count(ch) == 1 }, streamsWait, 5*time.Millisecond)
	time.Sleep(2 * time.Second)

	proxy.Cut()
	down := b.events.waitKind(t, backplane.EventDown, 0)
	for _, p := range []string{"1", "2", "3"} {
		require.NoError(t, a.Publish(bg, ch, []byte(p)))
	}
	srv.Kill(t)
	srv.Restart(t)
	proxy.Heal()
	restored := b.events.waitKind(t, backplane.EventRestored, down)
	assert.False(t, b.events.all()[restored].Gap, "nothing was lost")
	require.Eventually(t, func() bool { return b.rec.count(ch) == 4 }, streamsWait, 5*time.Millisecond)
	got, offs := b.rec.on(ch)
	checkSeq(t, "B", got, []int{0, 1, 2, 3})
	checkOffsets(t, "B", offs)
}

// A node that held a channel with no messages yet, and missed more of them
// than the log keeps, reports a gap: the log's first entries are gone.
func TestStreamsTrimmedBeforeFirstDeliveryIsAGap(t *testing.T) {
	const ch = "c:trimmed"
	srv := redistest.Start(t)
	proxy := redistest.NewProxy(t, srv.Addr())
	o := wsredis.StreamsOptions{Options: wsredis.Options{Prefix: "t" + randomHex() + ":", ProbeInterval: 100 * time.Millisecond}, MaxLen: 10}
	a := newStreamsNode(t, srv.Addr(), o)
	b := newStreamsNode(t, proxy.Addr(), o)
	require.NoError(t, b.Subscribe(bg, ch))
	proxy.Cut()
	down := b.events.waitKind(t, backplane.EventDown, 0)
	for i := 0; i < 1000; i++ {
		require.NoError(t, a.Publish(bg, ch, []byte("x")))
	}
	proxy.Heal()
	restored := b.events.waitKind(t, backplane.EventRestored, down)
	assert.True(t, b.events.all()[restored].Gap, "the log kept only the newest of 1,000")

	// And one that missed fewer than the log keeps reports none.
	const ch2 = "c:kept-first"
	require.NoError(t, b.Subscribe(bg, ch2))
	proxy.Cut()
	down = b.events.waitKind(t, backplane.EventDown, restored)
	for i := 0; i < 5; i++ {
		require.NoError(t, a.Publish(bg, ch2, []byte("y")))
	}
	proxy.Heal()
	restored = b.events.waitKind(t, backplane.EventRestored, down)
	assert.False(t, b.events.all()[restored].Gap, "all 5 were kept")
	require.Eventually(t, func() bool { return b.rec.count(ch2) == 5 }, streamsWait, 5*time.Millisecond)
}

// Something that anyone with access to Redis publishes on a node's channel
// is dropped and counted: a plain message, and a wake-up whose entry ID is
// far in the future, which would otherwise become the channel's position
// and silence every real message after it.
func TestStreamsForgedWakeUpsAreDropped(t *testing.T) {
	const ch = "c:forged"
	srv := redistest.Start(t)
	prefix := "t" + randomHex() + ":"
	o := wsredis.StreamsOptions{Options: wsredis.Options{Prefix: prefix}}
	a := newStreamsNode(t, srv.Addr(), o)
	b := newStreamsNode(t, srv.Addr(), o)
	require.NoError(t, b.Subscribe(bg, ch))
	require.NoError(t, a.Publish(bg, ch, []byte("0")))
	require.Eventually(t, func() bool { return b.rec.count(ch) == 1 }, streamsWait, 5*time.Millisecond)
	_, offs := b.rec.on(ch)
	epoch, _ := backplane.SplitOffset(offs[0])

	rc := srv.Client(t)
	for _, forged := range []string{
		"plain message",
		epoch + " 18446744073709551615-18446744073709551615 from the future",
		epoch + " " + futureID(time.Hour) + " an hour ahead",
	} {
		require.NoError(t, rc.Publish(bg, prefix+ch, forged).Err())
	}
	for i := 1; i <= 3; i++ {
		require.NoError(t, a.Publish(bg, ch, []byte{byte('0' + i)}))
	}
	require.Eventually(t, func() bool { return b.rec.count(ch) == 4 }, streamsWait, 5*time.Millisecond)
	got, _ := b.rec.on(ch)
	checkSeq(t, "B", got, []int{0, 1, 2, 3})
	require.EqualValues(t, 3, b.Stats().Malformed)
}

// futureID returns a stream ID d ahead of now.
func futureID(d time.Duration) string {
	return strconv.FormatInt(time.Now().Add(d).UnixMilli(), 10) + "-0"
}

// A probe channel that someone else publishes on cannot switch silent-death
// detection off: only the node's own unguessable probes count.
func TestProbeCannotBePoisoned(t *testing.T) {
	for _, typ := range backplaneTypes() {
		t.Run(typ.name, func(t *testing.T) {
			srv := redistest.Start(t)
			proxy := redistest.NewProxy(t, srv.Addr())
			prefix := "t" + randomHex() + ":"
			c := goredis.NewClient(&goredis.Options{Addr: proxy.Addr()})
			t.Cleanup(func() { _ = c.Close() })
			bp, err := typ.make(c, wsredis.Options{Prefix: prefix, Logger: quiet,
				ProbeInterval: 100 * time.Millisecond})
			require.NoError(t, err)
			t.Cleanup(func() { _ = bp.Close() })
			require.NoError(t, bp.Start(func(backplane.Message) {}))
			require.NoError(t, bp.Subscribe(bg, "c:x"))
			require.Eventually(t, func() bool { return bp.Health() == nil }, streamsWait, 10*time.Millisecond)

			rc := srv.Client(t)
			chans, err := rc.PubSubChannels(bg, prefix+"probe:*").Result()
			require.NoError(t, err)
			require.Len(t, chans, 1, "the node's probe channel")
			for _, p := range []string{"18446744073709551615", "99999999999", "1"} {
				require.NoError(t, rc.Publish(bg, chans[0], p).Err())
			}
			time.Sleep(300 * time.Millisecond) // let the forged probes arrive first
			proxy.Freeze()
			require.Eventually(t, func() bool { return errors.Is(bp.Health(), backplane.ErrUnavailable) }, streamsWait, 10*time.Millisecond,
				"a frozen link is found although forged probes came first")
			proxy.Heal()
			require.Eventually(t, func() bool { return bp.Health() == nil }, streamsWait, 10*time.Millisecond)
		})
	}
}

// While the backplane knows Redis is down, Publish fails at once with
// ErrUnavailable instead of retrying the dial until its context ends.
func TestPublishFailsFastWhileDown(t *testing.T) {
	for _, typ := range backplaneTypes() {
		t.Run(typ.name, func(t *testing.T) {
			srv := redistest.Start(t)
			// A client that would retry a failed dial for far longer than
			// the test's context.
			c := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), MaxRetries: 1000,
				MinRetryBackoff: 500 * time.Millisecond, MaxRetryBackoff: time.Second})
			t.Cleanup(func() { _ = c.Close() })
			bp, err := typ.make(c, wsredis.Options{Prefix: "t" + randomHex() + ":", Logger: quiet})
			require.NoError(t, err)
			t.Cleanup(func() { _ = bp.Close() })
			var events eventLog
			bp.Notify(events.add)
			require.NoError(t, bp.Start(func(backplane.Message) {}))
			require.NoError(t, bp.Subscribe(bg, "c:x"))
			require.NoError(t, bp.Publish(bg, "c:x", []byte("up")))

			srv.Kill(t)
			events.waitKind(t, backplane.EventDown, 0)
			for i := 0; i < 5; i++ {
				ctx, cancel := context.WithTimeout(bg, 10*time.Second)
				err := bp.Publish(ctx, "c:x", []byte("down"))
				cancel()
				require.ErrorIs(t, err, backplane.ErrUnavailable)
				require.NotErrorIs(t, err, context.DeadlineExceeded, "failed at once, not when the context ended")
			}
		})
	}
}
