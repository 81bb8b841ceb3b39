package redis

import (
	"context"
	"errors"
	"net/url"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/internal/redistest"
)

// pipelines records the size of every pipeline a test publisher sends.
type pipelines struct {
	mu    sync.Mutex
	sizes []int
	out   [2]chan struct{} // closed as the first and the second go out
}

func (pl *pipelines) sent(n int) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	pl.sizes = append(pl.sizes, n)
	if i := len(pl.sizes) - 1; i < len(pl.out) {
		close(pl.out[i])
	}
}

func (pl *pipelines) all() []int {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	return append([]int(nil), pl.sizes...)
}

// recordingPublisher starts a real redis-server and a publisher to it
// that records its pipelines; both end with the test.
// set, when not nil, changes the publisher's configuration first.
func recordingPublisher(t *testing.T, pipes, maxBatch int, set ...func(*publisherConfig)) (*publisher, *goredis.Client, *pipelines) {
	t.Helper()
	client := redistest.Start(t).Client(t)
	ctx, cancel := context.WithCancel(context.Background())
	pl := &pipelines{out: [2]chan struct{}{make(chan struct{}), make(chan struct{})}}
	cfg := publisherConfig{
		ctx: ctx, client: client, pipelines: pipes, maxBatch: maxBatch,
		done: func(error) {}, sent: pl.sent,
	}
	for _, f := range set {
		f(&cfg)
	}
	p := newPublisher(cfg)
	t.Cleanup(func() {
		cancel()
		p.close()
	})
	return p, client, pl
}

// TestPublishesShareThePipelineAfterTheOneInFlight holds Redis (CLIENT
// PAUSE) while one pipeline is in flight and checks that the publishes made
// meanwhile go out together in the next one, not each in a pipeline of its
// own beside it.
func TestPublishesShareThePipelineAfterTheOneInFlight(t *testing.T) {
	p, client, pl := recordingPublisher(t, 4, 256)
	ctx := context.Background()
	require.Equal(t, 4, p.overlapAt)

	// Long enough for the publishes below to be queued; it ends by itself.
	require.NoError(t, client.Do(ctx, "CLIENT", "PAUSE", "2000", "ALL").Err())

	// Fewer than overlapAt, which would start a pipeline beside the first.
	const later = 3
	var wg sync.WaitGroup
	errs := make(chan error, later+1)
	publish := func() {
		defer wg.Done()
		errs <- p.publishPlain(ctx, "c", []byte("m"))
	}
	wg.Add(1)
	go publish()
	<-pl.out[0]
	wg.Add(later)
	for range later {
		go publish()
	}
	// Every later publish is queued or held by the pipeline forming.
	require.Eventually(t, func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.waiting == 1 && len(p.queue) == later-1
	}, 5e9, 1e6)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Equal(t, []int{1, later}, pl.all(), "the publishes made while one was in flight share the next pipeline")
}

// TestPublishesOverlapUnderLoad checks that pipelines still overlap when
// the queue holds overlapAt requests: the second pipeline starts while the
// first is still in flight.
func TestPublishesOverlapUnderLoad(t *testing.T) {
	p, client, pl := recordingPublisher(t, 2, 8)
	ctx := context.Background()
	require.Equal(t, 2, p.overlapAt)

	require.NoError(t, client.Do(ctx, "CLIENT", "PAUSE", "2000", "ALL").Err())
	firstDone := make(chan error, 1)
	go func() { firstDone <- p.publishPlain(ctx, "c", []byte("m")) }()
	<-pl.out[0]
	var wg sync.WaitGroup
	wg.Add(3)
	for range 3 {
		go func() {
			defer wg.Done()
			assert.NoError(t, p.publishPlain(ctx, "c", []byte("m")))
		}()
	}
	<-pl.out[1]
	select {
	case <-firstDone:
		t.Fatal("the second pipeline waited for the first to be answered")
	default:
	}
	require.NoError(t, <-firstDone)
	wg.Wait()
}

// lingerLog records how each linger of a test publisher ended.
type lingerLog struct {
	mu      sync.Mutex
	joined  int
	missed  int
	started chan struct{} // a token as each linger begins to wait
}

func (l *lingerLog) set(linger time.Duration) func(*publisherConfig) {
	l.started = make(chan struct{}, 1024)
	return func(c *publisherConfig) {
		c.linger = linger
		c.lingering = func() { l.started <- struct{}{} }
		c.lingered = func(joined bool) {
			l.mu.Lock()
			defer l.mu.Unlock()
			if joined {
				l.joined++
			} else {
				l.missed++
			}
		}
	}
}

func (l *lingerLog) counts() (joined, missed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.joined, l.missed
}

// TestLingerTakesTheNextPublishAlong checks that, while publishes come
// closer together than half the linger, a publish that would go out alone
// waits for the next one and both share one pipeline; without the linger
// each goes out in a pipeline of its own.
func TestLingerTakesTheNextPublishAlong(t *testing.T) {
	var log lingerLog
	p, _, pl := recordingPublisher(t, 4, 256, log.set(time.Minute))
	ctx := context.Background()
	p.misses = 3 // from earlier lingers that nothing joined; a joined one forgets them

	// The first publish has no one before it: it goes out at once.
	require.NoError(t, p.publishPlain(ctx, "c", []byte("a")))
	select {
	case <-log.started:
		t.Fatal("the first publish lingered")
	default:
	}
	// The next one comes well within half a minute of it: it waits for
	// company, and the third joins it.
	errs := make(chan error, 2)
	go func() { errs <- p.publishPlain(ctx, "c", []byte("b")) }()
	select {
	case <-log.started:
	case <-time.After(10 * time.Second):
		t.Fatal("the second publish did not linger")
	}
	go func() { errs <- p.publishPlain(ctx, "c", []byte("c")) }()
	require.NoError(t, <-errs)
	require.NoError(t, <-errs)
	assert.Equal(t, []int{1, 2}, pl.all())
	joined, missed := log.counts()
	assert.Equal(t, 1, joined)
	assert.Zero(t, missed)
	assert.Zero(t, p.misses)
}

// TestLingerIsNotPaidByOneMessageAtATime checks that a caller publishing
// one message at a time (each after the last was answered, so never in
// company) pays a linger only now and then: after each linger nothing
// joined, the next 2, 4, 8 ... pipelines go out at once. Without that every
// one of its publishes would wait out the linger.
func TestLingerIsNotPaidByOneMessageAtATime(t *testing.T) {
	var log lingerLog
	p, _, pl := recordingPublisher(t, 4, 256, log.set(100*time.Millisecond))
	ctx := context.Background()
	const n = 100
	for i := range n {
		require.NoError(t, p.publishPlain(ctx, "c", []byte{byte(i)}))
	}
	joined, missed := log.counts()
	assert.Zero(t, joined)
	// Misses at about the 2nd, 6th, 12th, 22nd, 40th and 74th publish
	// (after each, the next publish comes more than half a linger later
	// and goes out at once; then 2, 4, 8, 16 and 32 that would linger do
	// not), or fewer where a round trip took longer than half the linger.
	assert.GreaterOrEqual(t, missed, 1)
	assert.LessOrEqual(t, missed, 6)
	assert.Len(t, pl.all(), n)
}

// TestLingerWaitsOnlyWhilePublishesComeClose checks that publishes further
// apart than half the linger go out at once, each alone.
func TestLingerWaitsOnlyWhilePublishesComeClose(t *testing.T) {
	var log lingerLog
	const linger = 40 * time.Millisecond
	p, _, pl := recordingPublisher(t, 4, 256, log.set(linger))
	ctx := context.Background()
	for i := range 4 {
		if i > 0 {
			time.Sleep(linger) // the gap the test is about, not a wait for something
		}
		require.NoError(t, p.publishPlain(ctx, "c", []byte{byte(i)}))
	}
	joined, missed := log.counts()
	assert.Zero(t, joined+missed, "no publish lingered")
	assert.Equal(t, []int{1, 1, 1, 1}, pl.all())
}

// TestLingerOption checks Options.Linger's default, its off switch in
// Options (negative) and in a URL (linger=0), and its bound.
func TestLingerOption(t *testing.T) {
	o, err := (&Options{}).withDefaults()
	require.NoError(t, err)
	assert.Equal(t, defaultLinger, o.Linger)
	o, err = (&Options{Linger: -1}).withDefaults()
	require.NoError(t, err)
	assert.Zero(t, o.Linger, "negative is off")
	_, err = (&Options{Linger: time.Second}).withDefaults()
	assert.ErrorIs(t, err, ErrInvalidOptions)

	for query, want := range map[string]time.Duration{
		"": defaultLinger, "linger=0": 0, "linger=2ms": 2 * time.Millisecond, "linger=-1ms": 0,
	} {
		cfg, err := parseQuery(&url.URL{Scheme: "redis", Host: "127.0.0.1:1", RawQuery: query})
		require.NoError(t, err, query)
		o, err := cfg.opts.Options.withDefaults()
		require.NoError(t, err, query)
		assert.Equal(t, want, o.Linger, query)
	}
	for _, bad := range []string{"linger=soon", "linger=1h"} {
		_, err := parseQuery(&url.URL{Scheme: "redis", Host: "127.0.0.1:1", RawQuery: bad})
		assert.ErrorIs(t, err, ErrInvalidOptions, bad)
	}
}

// TestLingerNeverWaitsBesideAPipelineInFlight holds Redis (CLIENT PAUSE)
// with one pipeline in flight and checks that the next publish, close
// behind it, waits for that pipeline's answer rather than lingering too.
func TestLingerNeverWaitsBesideAPipelineInFlight(t *testing.T) {
	var log lingerLog
	p, client, pl := recordingPublisher(t, 4, 256, log.set(time.Minute))
	ctx := context.Background()
	require.NoError(t, client.Do(ctx, "CLIENT", "PAUSE", "500", "ALL").Err())
	errs := make(chan error, 2)
	go func() { errs <- p.publishPlain(ctx, "c", []byte("a")) }()
	<-pl.out[0]
	go func() { errs <- p.publishPlain(ctx, "c", []byte("b")) }()
	require.NoError(t, <-errs)
	require.NoError(t, <-errs)
	select {
	case <-log.started:
		t.Fatal("a publish lingered beside a pipeline in flight")
	default:
	}
	assert.Equal(t, []int{1, 1}, pl.all())
}

// TestAPipelineIsAnsweredBeforeItsCallers checks that a pipeline no longer
// counts as in flight when its callers are told, so that one publishing
// again at once is not held for it (nor lingers behind it).
func TestAPipelineIsAnsweredBeforeItsCallers(t *testing.T) {
	var pp *publisher
	inflight := make(chan int, 16)
	p, _, _ := recordingPublisher(t, 4, 256, func(c *publisherConfig) {
		c.done = func(error) {
			pp.mu.Lock()
			inflight <- pp.inflight
			pp.mu.Unlock()
		}
	})
	pp = p
	for range 3 {
		require.NoError(t, p.publishPlain(context.Background(), "c", []byte("m")))
		assert.Zero(t, <-inflight)
	}
}

// blockedScript is a logScript whose commands find no script (EVALSHA of
// one Redis never loaded) and whose reload waits for the test.
type blockedScript struct {
	reloading chan struct{} // a token as a reload begins
	reload    chan error    // what the reload returns
}

func (b *blockedScript) appendCmd(ctx context.Context, pipe goredis.Pipeliner, r *pubReq) goredis.Cmder {
	return pipe.EvalSha(ctx, "0000000000000000000000000000000000000000", []string{r.key}, r.payload)
}

func (b *blockedScript) loadScript(context.Context) error {
	b.reloading <- struct{}{}
	return <-b.reload
}

// TestAPipelineRetriedAfterNoscriptStaysInFlight checks that a pipeline
// that found its script missing still counts as in flight while the script
// is loaded again and its commands resent, so that a later publish cannot
// overtake them.
func TestAPipelineRetriedAfterNoscriptStaysInFlight(t *testing.T) {
	script := &blockedScript{reloading: make(chan struct{}, 4), reload: make(chan error, 4)}
	p, _, _ := recordingPublisher(t, 4, 256, func(c *publisherConfig) { c.logs = script })
	ctx := context.Background()
	errc := make(chan error, 1)
	go func() { errc <- p.publish(ctx, "c", "log:c", "epoch:c", []byte("a")) }()
	<-script.reloading
	p.mu.Lock()
	inflight := p.inflight
	p.mu.Unlock()
	assert.Equal(t, 1, inflight, "in flight while it reloads the script")
	script.reload <- errors.New("no reload this time")
	assert.Error(t, <-errc, "the script was never there")
}
