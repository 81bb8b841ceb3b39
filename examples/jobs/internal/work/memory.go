package work

import (
	"context"
	"sync"
	"time"
)

var _ Queue = (*Memory)(nil)

// dedupFor is how long a job ID is remembered, so that a client that sends
// a job again (it did not see it queued before it reconnected) queues it
// once.
const dedupFor = time.Hour

// Memory is a queue in one process, shaped like Redis: jobs are taken by
// any consumer, a job whose handler fails goes back to the queue after
// RetryAfter.
type Memory struct {
	limit int
	// RetryAfter is how long a failed job waits before it is delivered
	// again. Set it before the first Consume. Default 1s.
	RetryAfter time.Duration

	mu     sync.Mutex
	jobs   []Job
	seen   map[string]time.Time // user + "/" + ID -> when enqueued
	pruned time.Time            // when seen was last rid of old IDs
	ready  chan struct{}        // closed and replaced when a job arrives
}

// NewMemory returns an empty queue that holds at most limit jobs waiting.
func NewMemory(limit int) *Memory {
	return &Memory{limit: limit, RetryAfter: time.Second, seen: map[string]time.Time{}, ready: make(chan struct{})}
}

// Enqueue adds j, or returns ErrFull.
func (q *Memory) Enqueue(_ context.Context, j Job) (bool, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := time.Now()
	key := j.User + "/" + j.ID
	if t, ok := q.seen[key]; ok && now.Sub(t) < dedupFor {
		return true, nil
	}
	if len(q.jobs) >= q.limit {
		return false, ErrFull
	}
	if now.Sub(q.pruned) >= time.Minute {
		q.pruned = now
		for k, t := range q.seen {
			if now.Sub(t) >= dedupFor {
				delete(q.seen, k)
			}
		}
	}
	q.seen[key] = now
	q.push(j)
	return false, nil
}

// push appends j and wakes the consumers. q.mu must be held.
func (q *Memory) push(j Job) {
	q.jobs = append(q.jobs, j)
	close(q.ready)
	q.ready = make(chan struct{})
}

// take returns the next job, or false when ctx ends first.
func (q *Memory) take(ctx context.Context) (Job, bool) {
	for {
		q.mu.Lock()
		if len(q.jobs) > 0 {
			j := q.jobs[0]
			q.jobs = q.jobs[1:]
			q.mu.Unlock()
			return j, true
		}
		ready := q.ready
		q.mu.Unlock()
		select {
		case <-ready:
		case <-ctx.Done():
			return Job{}, false
		}
	}
}

// Consume runs n goroutines that take jobs and handle them, until ctx ends.
// A job whose handler fails is put back after RetryAfter.
func (q *Memory) Consume(ctx context.Context, _ string, n int, handle Handler) error {
	var wg sync.WaitGroup
	for range max(n, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				j, ok := q.take(ctx)
				if !ok {
					return
				}
				if err := handle(ctx, j); err != nil {
					select {
					case <-time.After(q.RetryAfter):
					case <-ctx.Done():
					}
					q.mu.Lock()
					q.push(j) // a job is never dropped, even past the limit
					q.mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return ctx.Err()
}
