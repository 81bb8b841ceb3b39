package redis

import (
	"context"
	"sync"
	"testing"

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
func recordingPublisher(t *testing.T, pipes, maxBatch int) (*publisher, *goredis.Client, *pipelines) {
	t.Helper()
	client := redistest.Start(t).Client(t)
	ctx, cancel := context.WithCancel(context.Background())
	pl := &pipelines{out: [2]chan struct{}{make(chan struct{}), make(chan struct{})}}
	p := newPublisher(publisherConfig{
		ctx: ctx, client: client, pipelines: pipes, maxBatch: maxBatch,
		done: func(error) {}, sent: pl.sent,
	})
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
