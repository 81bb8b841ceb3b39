package redis_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/backplane"
	wsredis "github.com/wshub/wshub/backplane/redis"
	"github.com/wshub/wshub/internal/redistest"
)

// Tests of Streams against real redis-server processes: a restart of
// Redis, a node cut off and caught up from the logs, and the memory the logs
// take under load.

// streamsWait bounds the waits of these tests. It guards against a hang; a
// correct backplane is done long before it.
const streamsWait = 15 * time.Second

// eventLog records the Events a backplane reports.
type eventLog struct {
	mu  sync.Mutex
	evs []backplane.Event
}

func (l *eventLog) add(ev backplane.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.evs = append(l.evs, ev)
}

func (l *eventLog) all() []backplane.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]backplane.Event(nil), l.evs...)
}

// waitKind waits for an event of kind at index from or later and returns
// its index.
func (l *eventLog) waitKind(t *testing.T, kind backplane.EventKind, from int) int {
	t.Helper()
	at := -1
	require.Eventuallyf(t, func() bool {
		evs := l.all()
		for i := from; i < len(evs); i++ {
			if evs[i].Kind == kind {
				at = i
				return true
			}
		}
		return false
	}, streamsWait, 10*time.Millisecond, "no %v event after event %d; events: %v", kind, from, l.all())
	return at
}

// received records, per channel, the payloads and offsets a node was
// given, in order.
type received struct {
	mu   sync.Mutex
	msgs map[string][]string // payloads
	offs map[string][]string // their offsets
}

func newReceived() *received {
	return &received{msgs: make(map[string][]string), offs: make(map[string][]string)}
}

func (r *received) handle(m backplane.Message) {
	ch, off, p := m.Channel, m.Offset, m.Payload
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs[ch] = append(r.msgs[ch], string(p))
	r.offs[ch] = append(r.offs[ch], off)
}

func (r *received) on(ch string) (payloads, offsets []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.msgs[ch]...), append([]string(nil), r.offs[ch]...)
}

func (r *received) count(ch string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.msgs[ch])
}

// streamsNode is a started Streams backplane with its own client.
type streamsNode struct {
	*wsredis.Streams
	events *eventLog
	rec    *received
}

// newStreamsNode makes a Streams backplane on a client of its own to
// addr, records its events and messages, and starts it. The test's cleanup
// closes the backplane, then the client.
func newStreamsNode(t *testing.T, addr string, o wsredis.StreamsOptions) *streamsNode {
	t.Helper()
	c := goredis.NewClient(&goredis.Options{Addr: addr})
	t.Cleanup(func() { _ = c.Close() })
	o.Logger = quiet
	bp, err := wsredis.NewStreams(c, &o)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, bp.Close()) })
	n := &streamsNode{Streams: bp, events: &eventLog{}, rec: newReceived()}
	bp.Notify(n.events.add)
	require.NoError(t, bp.Start(n.rec.handle))
	return n
}

// checkSeq checks that payloads are the decimal numbers want, in order.
func checkSeq(t *testing.T, what string, payloads []string, want []int) {
	t.Helper()
	w := make([]string, len(want))
	for i, n := range want {
		w[i] = strconv.Itoa(n)
	}
	require.Equal(t, w, payloads, what)
}

// checkOffsets checks that offsets grow strictly.
func checkOffsets(t *testing.T, what string, offsets []string) {
	t.Helper()
	for i := 1; i < len(offsets); i++ {
		require.Greater(t, offsets[i], offsets[i-1], "%s: offset %d", what, i)
	}
}

// TestStreamsRedisRestart kills Redis (appendonly, fsync always) in the
// middle of traffic and restarts it: every message whose Publish returned
// nil reaches the subscribed node exactly once and in order per channel,
// messages whose Publish failed reach it at most once, and the node reports
// the outage as EventDown then EventRestored, without a gap since the logs
// survived the restart.
func TestStreamsRedisRestart(t *testing.T) {
	srv := redistest.Start(t, redistest.WithAppendOnly())
	// The logs keep everything this test publishes (a few thousand
	// messages a second, for seconds), so that only the restart can lose
	// messages, not retention.
	o := wsredis.StreamsOptions{Options: wsredis.Options{Prefix: "t" + randomHex() + ":", ProbeInterval: 100 * time.Millisecond}, MaxLen: 1_000_000}
	a := newStreamsNode(t, srv.Addr(), o)
	b := newStreamsNode(t, srv.Addr(), o)
	chans := []string{"r:0", "r:1", "r:2", "r:3", "r:4"}
	require.NoError(t, b.Subscribe(bg, chans...))

	// The publisher: message i goes to chans[i%5] with payload i. ok[i]
	// says whether its Publish returned nil; it is read after done.
	var (
		ok               []bool
		acked, failed    atomic.Int64
		stop, done       = make(chan struct{}), make(chan struct{})
		stopOnce         sync.Once
		stopPublisher    = func() { stopOnce.Do(func() { close(stop) }); <-done }
		publishTimeout   = 200 * time.Millisecond
		errorPause       = 5 * time.Millisecond
		firstErr         atomic.Value
		beforeKill       = int64(300)
		afterRestart     = int64(300)
		afterRestoredMin = int64(300)
		downFailures     = int64(10)
	)
	t.Cleanup(stopPublisher) // before the backplanes close, if the test fails early
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(bg, publishTimeout)
			err := a.Publish(ctx, chans[i%len(chans)], []byte(strconv.Itoa(i)))
			cancel()
			ok = append(ok, err == nil)
			if err == nil {
				acked.Add(1)
				continue
			}
			failed.Add(1)
			firstErr.CompareAndSwap(nil, err.Error())
			time.Sleep(errorPause) // do not spin while Redis is down
		}
	}()
	waitAcked := func(n int64, what string) {
		t.Helper()
		require.Eventuallyf(t, func() bool { return acked.Load() >= n }, streamsWait, 5*time.Millisecond,
			"%s: %d publishes acknowledged, want %d", what, acked.Load(), n)
	}

	waitAcked(beforeKill, "before the kill")
	srv.Kill(t)
	// Keep Redis down while some publishes fail.
	require.Eventually(t, func() bool { return failed.Load() >= downFailures }, streamsWait, 5*time.Millisecond,
		"fewer than %d publishes failed while Redis was down", downFailures)
	srv.Restart(t)
	waitAcked(acked.Load()+afterRestart, "after the restart")
	restored := b.events.waitKind(t, backplane.EventRestored, b.events.waitKind(t, backplane.EventDown, 0))
	waitAcked(acked.Load()+afterRestoredMin, "after EventRestored")
	stopPublisher()
	t.Logf("published %d messages: %d acknowledged, %d failed (first error: %v)",
		len(ok), acked.Load(), failed.Load(), firstErr.Load())

	// What each channel must receive: its acknowledged messages, in order.
	want := make(map[string][]int)
	for i, acked := range ok {
		if acked {
			ch := chans[i%len(chans)]
			want[ch] = append(want[ch], i)
		}
	}
	has := func(ch string) bool {
		got, _ := b.rec.on(ch)
		seen := make(map[string]bool, len(got))
		for _, p := range got {
			seen[p] = true
		}
		for _, i := range want[ch] {
			if !seen[strconv.Itoa(i)] {
				return false
			}
		}
		return true
	}
	complete := func() bool {
		for _, ch := range chans {
			if !has(ch) {
				return false
			}
		}
		return true
	}
	if !assert.Eventually(t, complete, streamsWait, 10*time.Millisecond, "acknowledged messages missing at the subscriber") {
		for _, ch := range chans {
			got, _ := b.rec.on(ch)
			seen := make(map[string]bool, len(got))
			for _, p := range got {
				seen[p] = true
			}
			var missing []int
			for _, i := range want[ch] {
				if !seen[strconv.Itoa(i)] {
					missing = append(missing, i)
				}
			}
			if len(missing) > 0 {
				t.Logf("%s: %d acknowledged messages missing, from %d to %d; %d received", ch, len(missing), missing[0], missing[len(missing)-1], len(got))
			}
		}
		t.Fatalf("subscriber events %v; stats %+v", b.events.all(), b.Stats())
	}

	unacked := 0
	for _, ch := range chans {
		got, offs := b.rec.on(ch)
		checkOffsets(t, ch, offs)
		seen := make(map[int]bool, len(got))
		var ackedGot []int
		for _, p := range got {
			i, err := strconv.Atoi(p)
			require.NoError(t, err, "%s: payload %q", ch, p)
			require.True(t, i >= 0 && i < len(ok) && chans[i%len(chans)] == ch, "%s: message %d was not published there", ch, i)
			require.False(t, seen[i], "%s: message %d delivered twice", ch, i)
			seen[i] = true
			if ok[i] {
				ackedGot = append(ackedGot, i)
			} else {
				unacked++
			}
		}
		require.Equal(t, want[ch], ackedGot, "%s: acknowledged messages, in order, exactly once", ch)
	}
	evs := b.events.all()
	t.Logf("subscriber: %d messages whose Publish failed were delivered; events %v; stats %+v", unacked, evs, b.Stats())
	require.Equal(t, backplane.EventDown, evs[0].Kind, "first event")
	require.Equal(t, backplane.EventRestored, evs[len(evs)-1].Kind, "last event")
	for _, ev := range evs[restored:] {
		if ev.Kind == backplane.EventRestored {
			assert.False(t, ev.Gap, "EventRestored with a gap, yet the logs survived the restart")
		}
	}
}

// TestStreamsCatchUp cuts a node off Redis while 2,000 messages are
// published to a channel it holds: when the link heals, it delivers them
// all from the log, after those it had before the cut, in order and once
// each, reports EventRestored without a gap, and then goes on live.
func TestStreamsCatchUp(t *testing.T) {
	const ch, before, during, after = "c:1", 10, 2000, 10
	srv := redistest.Start(t)
	proxy := redistest.NewProxy(t, srv.Addr())
	o := wsredis.StreamsOptions{Options: wsredis.Options{Prefix: "t" + randomHex() + ":", ProbeInterval: 100 * time.Millisecond}, MaxLen: 10 * during}
	a := newStreamsNode(t, srv.Addr(), o)
	b := newStreamsNode(t, proxy.Addr(), o)
	require.NoError(t, b.Subscribe(bg, ch))

	seq := 0
	publish := func(k int) {
		t.Helper()
		for range k {
			require.NoError(t, a.Publish(bg, ch, []byte(strconv.Itoa(seq))), "Publish %d", seq)
			seq++
		}
	}
	waitCount := func(k int) {
		t.Helper()
		require.Eventuallyf(t, func() bool { return b.rec.count(ch) >= k }, streamsWait, 5*time.Millisecond,
			"%d messages received, want %d", b.rec.count(ch), k)
	}
	publish(before)
	waitCount(before)

	from := len(b.events.all())
	proxy.Cut()
	down := b.events.waitKind(t, backplane.EventDown, from)
	caughtUp := b.Stats().CaughtUp
	publish(during)
	proxy.Heal()
	restored := b.events.waitKind(t, backplane.EventRestored, down)
	waitCount(before + during)
	publish(after)
	waitCount(before + during + after)

	got, offs := b.rec.on(ch)
	want := make([]int, before+during+after)
	for i := range want {
		want[i] = i
	}
	checkSeq(t, "messages at the node that was cut off", got, want)
	checkOffsets(t, ch, offs)
	evs := b.events.all()
	for _, ev := range evs {
		if ev.Kind == backplane.EventRestored {
			assert.False(t, ev.Gap, "EventRestored with a gap, yet the log kept everything; events %v", evs)
		}
	}
	assert.Equal(t, backplane.EventRestored, evs[restored].Kind)
	assert.EqualValues(t, during, b.Stats().CaughtUp-caughtUp, "messages delivered from the log")
	t.Logf("events %v; stats %+v", evs, b.Stats())
}

// TestStreamsCatchUpGap cuts a node off while 1,000 messages are published
// to a channel whose log keeps only about 10: when the link heals, the node
// reports EventRestored with a gap, and delivers what the log still holds
// after what it had, in order and once each, up to the newest message.
func TestStreamsCatchUpGap(t *testing.T) {
	const ch, before, during = "c:gap", 5, 1000
	srv := redistest.Start(t)
	proxy := redistest.NewProxy(t, srv.Addr())
	o := wsredis.StreamsOptions{Options: wsredis.Options{Prefix: "t" + randomHex() + ":", ProbeInterval: 100 * time.Millisecond}, MaxLen: 10}
	a := newStreamsNode(t, srv.Addr(), o)
	b := newStreamsNode(t, proxy.Addr(), o)
	require.NoError(t, b.Subscribe(bg, ch))
	down := 0
	for i := range before + during {
		if i == before {
			require.Eventually(t, func() bool { return b.rec.count(ch) >= before }, streamsWait, 5*time.Millisecond)
			from := len(b.events.all())
			proxy.Cut()
			down = b.events.waitKind(t, backplane.EventDown, from)
		}
		require.NoError(t, a.Publish(bg, ch, []byte(strconv.Itoa(i))), "Publish %d", i)
	}
	proxy.Heal()
	restored := b.events.waitKind(t, backplane.EventRestored, down)
	assert.True(t, b.events.all()[restored].Gap, "EventRestored after the log dropped messages the node missed")
	last := strconv.Itoa(before + during - 1)
	require.Eventually(t, func() bool {
		got, _ := b.rec.on(ch)
		return len(got) > 0 && got[len(got)-1] == last
	}, streamsWait, 5*time.Millisecond, "the newest message did not arrive")

	got, offs := b.rec.on(ch)
	checkOffsets(t, ch, offs)
	checkSeq(t, "messages before the cut", got[:before], []int{0, 1, 2, 3, 4})
	// After the cut: the newest messages, without a hole.
	tail := got[before:]
	first, err := strconv.Atoi(tail[0])
	require.NoError(t, err)
	want := make([]int, 0, len(tail))
	for i := first; i < before+during; i++ {
		want = append(want, i)
	}
	checkSeq(t, "messages after the cut", tail, want)
	assert.Greater(t, first, before, "nothing was dropped from a log of about 10")
	t.Logf("after the cut the node got %d of %d messages (from %d); events %v", len(tail), during, first, b.events.all())
}

// TestStreamsSoakMemory publishes 100,000 messages over 1,000 channels with
// MaxLen 10 through the backplane, 64 publishers at once, to a node that
// holds every channel, and checks that Redis's memory stays bounded by
// retention, not by traffic.
func TestStreamsSoakMemory(t *testing.T) {
	const (
		channels   = 1000
		perChannel = 100
		publishers = 64
		maxLen     = 10
		payloadLen = 200
	)
	// The bound. A log of MaxLen 10 with "~" trimming keeps at least 10
	// entries and drops only whole listpack nodes, each closed at 100
	// entries or 4 KB (stream-node-max-entries, stream-node-max-bytes): with
	// 200-byte payloads a node holds under 20 entries, so a trimmed log
	// keeps two or three nodes. Redis 7.0 allocates a new node at 4 KB at
	// once, and the entry that overflows it moves it to jemalloc's 5 KB
	// class, so a log costs at most about 3 × 5 KB + 1 KB for its key,
	// expiry, rax and stream header ≈ 16 KB; × 1,000 logs ≈ 16 MB, plus
	// about 1 MB for an empty server, the script and the clients ≈ 17 MB.
	// The bound is 20 MB. (Measured with Redis 7.0: ≈ 9.7 MB, 9.2 KB per
	// log, XLEN 24 on average. Untrimmed, the same 100,000 messages take
	// ≈ 25.5 MB, above the bound, so the check does catch a log that is not
	// trimmed.)
	const bound = 20 << 20

	srv := redistest.Start(t)
	rc := srv.Client(t)
	ctx, cancel := context.WithTimeout(bg, 60*time.Second)
	defer cancel()
	empty := usedMemory(t, ctx, rc)

	o := wsredis.StreamsOptions{Options: wsredis.Options{Prefix: "t" + randomHex() + ":"}, MaxLen: maxLen}
	pub := newStreamsNode(t, srv.Addr(), o)
	// The receiving node counts and checks order per channel instead of
	// keeping 100,000 payloads.
	sub := newOrderChecker(t, srv.Addr(), o)
	names := make([]string, channels)
	for i := range names {
		names[i] = "s:" + strconv.Itoa(i)
	}
	require.NoError(t, sub.bp.Subscribe(ctx, names...))

	// One publish first loads the publish script into the fresh server, so
	// that the concurrent pipelines below do not race to load it: a
	// pipeline that fails with NOSCRIPT is resent whole, which publishes
	// twice the messages of it that ran after another pipeline loaded the
	// script (see publisher.send). This test is about memory, not that.
	require.NoError(t, pub.Publish(ctx, "s:warm-up", []byte("x")))

	pad := strings.Repeat("x", payloadLen)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, publishers)
	for g := range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Publisher g owns the channels c with c%publishers == g, so
			// each channel has one publisher and a defined order.
			for round := range perChannel {
				for c := g; c < channels; c += publishers {
					p := fmt.Sprintf("%d %s", round, pad)[:payloadLen]
					if err := pub.Publish(ctx, names[c], []byte(p)); err != nil {
						errs <- fmt.Errorf("Publish round %d to %s: %w", round, names[c], err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	published := time.Since(start)
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Eventually(t, func() bool { return sub.total.Load() >= channels*perChannel }, 30*time.Second, 10*time.Millisecond,
		"received %d of %d", sub.total.Load(), channels*perChannel)
	require.NoError(t, sub.error(), "order per channel; subscriber stats %+v, publisher stats %+v", sub.bp.Stats(), pub.Stats())
	require.EqualValues(t, channels*perChannel, sub.total.Load(), "messages received; subscriber stats %+v", sub.bp.Stats())
	for _, n := range names {
		require.Equal(t, perChannel, sub.count(n), "messages on %s", n)
	}

	used := usedMemory(t, ctx, rc)
	pipe := rc.Pipeline()
	lens := make([]*goredis.IntCmd, channels)
	ttls := make([]*goredis.DurationCmd, channels)
	for i, n := range names {
		lens[i] = pipe.XLen(ctx, o.Prefix+"log:"+n)
		ttls[i] = pipe.PTTL(ctx, o.Prefix+"log:"+n)
	}
	_, err := pipe.Exec(ctx)
	require.NoError(t, err)
	var retained int64
	for i, n := range names {
		l := lens[i].Val()
		retained += l
		require.GreaterOrEqual(t, l, int64(maxLen), "XLEN %s: fewer than MaxLen", n)
		require.LessOrEqual(t, l, int64(maxLen+100), "XLEN %s: not trimmed to about MaxLen", n)
		require.Positive(t, ttls[i].Val(), "PTTL %s: the log has no expiry", n)
	}
	t.Logf("published %d messages in %v; used_memory %d bytes empty, %d after (%.1f MB); %d messages retained in %d logs (avg XLEN %.1f): %.0f bytes per retained message, %.0f bytes per log",
		channels*perChannel, published.Round(time.Millisecond), empty, used, float64(used)/(1<<20),
		retained, channels, float64(retained)/channels,
		float64(used-empty)/float64(retained), float64(used-empty)/channels)
	require.Less(t, used, int64(bound), "used_memory after the soak")
}

// usedMemory returns Redis's used_memory from INFO memory.
func usedMemory(t *testing.T, ctx context.Context, rc *goredis.Client) int64 {
	t.Helper()
	info, err := rc.Info(ctx, "memory").Result()
	require.NoError(t, err)
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			require.NoError(t, err, "used_memory %q", v)
			return n
		}
	}
	require.FailNow(t, "no used_memory in INFO memory", info)
	return 0
}

// orderChecker is a Streams node that counts what it receives per
// channel and checks that each channel's rounds come in order.
type orderChecker struct {
	bp    *wsredis.Streams
	total atomic.Int64

	mu   sync.Mutex
	next map[string]int // the round expected next, per channel
	err  error          // the first disorder
}

func newOrderChecker(t *testing.T, addr string, o wsredis.StreamsOptions) *orderChecker {
	t.Helper()
	c := goredis.NewClient(&goredis.Options{Addr: addr})
	t.Cleanup(func() { _ = c.Close() })
	o.Logger = quiet
	bp, err := wsredis.NewStreams(c, &o)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, bp.Close()) })
	oc := &orderChecker{bp: bp, next: make(map[string]int)}
	require.NoError(t, bp.Start(oc.handle))
	return oc
}

func (oc *orderChecker) handle(m backplane.Message) {
	ch, p := m.Channel, m.Payload
	round, _, _ := strings.Cut(string(p), " ")
	oc.mu.Lock()
	if want := strconv.Itoa(oc.next[ch]); round != want && oc.err == nil {
		oc.err = fmt.Errorf("%s: round %s arrived, want %s", ch, round, want)
	}
	oc.next[ch]++
	oc.mu.Unlock()
	oc.total.Add(1)
}

func (oc *orderChecker) count(ch string) int {
	oc.mu.Lock()
	defer oc.mu.Unlock()
	return oc.next[ch]
}

func (oc *orderChecker) error() error {
	oc.mu.Lock()
	defer oc.mu.Unlock()
	return oc.err
}

// A Redis that restarts without persistence loses the logs: a node that
// missed messages published just before is told so (Gap), not told that
// an empty log means nothing happened.
func TestStreamsRestartWithoutPersistenceIsAGap(t *testing.T) {
	const ch = "c:lost"
	srv := redistest.Start(t)
	proxy := redistest.NewProxy(t, srv.Addr())
	o := wsredis.StreamsOptions{Options: wsredis.Options{Prefix: "t" + randomHex() + ":", ProbeInterval: 100 * time.Millisecond}}
	a := newStreamsNode(t, srv.Addr(), o)
	b := newStreamsNode(t, proxy.Addr(), o)
	require.NoError(t, b.Subscribe(bg, ch))
	require.NoError(t, a.Publish(bg, ch, []byte("seen")))
	require.Eventually(t, func() bool { return b.rec.count(ch) == 1 }, streamsWait, 5*time.Millisecond)

	from := len(b.events.all())
	proxy.Cut()
	down := b.events.waitKind(t, backplane.EventDown, from)
	require.NoError(t, a.Publish(bg, ch, []byte("lost")))
	srv.Kill(t)
	srv.Restart(t) // no appendonly: the log is gone
	proxy.Heal()
	restored := b.events.waitKind(t, backplane.EventRestored, down)
	assert.True(t, b.events.all()[restored].Gap, "the restart lost a message; events %v", b.events.all())
}
