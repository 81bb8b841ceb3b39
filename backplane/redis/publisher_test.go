package redis

import (
	"context"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/internal/redistest"
)

// TestPublishesShareThePipelineAfterTheOneInFlight holds Redis (CLIENT
// PAUSE) while one pipeline is in flight and checks that the publishes made
// meanwhile go out together in the next one, not each in a pipeline of its
// own beside it.
func TestPublishesShareThePipelineAfterTheOneInFlight(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var mu sync.Mutex
	var sizes []int
	firstOut := make(chan struct{})
	p := newPublisher(publisherConfig{
		ctx: ctx, client: client, pipelines: 4, maxBatch: 256,
		done: func(error) {},
		sent: func(n int) {
			mu.Lock()
			defer mu.Unlock()
			sizes = append(sizes, n)
			if len(sizes) == 1 {
				close(firstOut)
			}
		},
	})
	defer p.close()
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
	<-firstOut
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
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []int{1, later}, sizes, "the publishes made while one was in flight share the next pipeline")
}

// TestPublishesOverlapUnderLoad checks that pipelines still overlap when
// the queue holds overlapAt requests: the second pipeline starts while the
// first is still in flight.
func TestPublishesOverlapUnderLoad(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var mu sync.Mutex
	var sizes []int
	firstOut, secondOut := make(chan struct{}), make(chan struct{})
	p := newPublisher(publisherConfig{
		ctx: ctx, client: client, pipelines: 2, maxBatch: 8,
		done: func(error) {},
		sent: func(n int) {
			mu.Lock()
			defer mu.Unlock()
			sizes = append(sizes, n)
			switch len(sizes) {
			case 1:
				close(firstOut)
			case 2:
				close(secondOut)
			}
		},
	})
	defer p.close()
	require.Equal(t, 2, p.overlapAt)

	require.NoError(t, client.Do(ctx, "CLIENT", "PAUSE", "2000", "ALL").Err())
	firstDone := make(chan error, 1)
	go func() { firstDone <- p.publishPlain(ctx, "c", []byte("m")) }()
	<-firstOut
	var wg sync.WaitGroup
	wg.Add(3)
	for range 3 {
		go func() {
			defer wg.Done()
			assert.NoError(t, p.publishPlain(ctx, "c", []byte("m")))
		}()
	}
	<-secondOut
	select {
	case <-firstDone:
		t.Fatal("the second pipeline waited for the first to be answered")
	default:
	}
	require.NoError(t, <-firstDone)
	wg.Wait()
}
