package work

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/wshub/wshub/internal/redistest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).queuedNewConn.func2"))
}

const waitFor = 10 * time.Second

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestCompute(t *testing.T) {
	for _, tt := range []struct{ in, want, err string }{
		{"2", "2", ""},
		{"360", "2^3 × 3^2 × 5", ""},
		{" 97 ", "97", ""},
		{"1000000000000", "2^12 × 5^12", ""},
		{"999999999989", "999999999989", ""}, // the largest prime below 10^12
		{"1", "", "not a whole number"},
		{"1000000000001", "", "not a whole number"},
		{"-4", "", "not a whole number"},
		{"abc", "", "not a whole number"},
	} {
		t.Run(tt.in, func(t *testing.T) {
			got, err := Compute(tt.in)
			if tt.err != "" {
				assert.ErrorContains(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestJobCheck(t *testing.T) {
	assert.NoError(t, Job{ID: "j-1_a", Input: "1"}.Check())
	for _, j := range []Job{{ID: "", Input: "1"}, {ID: "a b", Input: "1"}, {ID: "x"}, {ID: string(make([]byte, 65)), Input: "1"}} {
		assert.Error(t, j.Check(), "%+v", j)
	}
}

// collector is a handler that records the jobs it handled and can fail
// or hang on demand.
type collector struct {
	mu   sync.Mutex
	got  []string
	fail map[string]int // job ID -> failures left
	hang map[string]bool
}

func (c *collector) handle(ctx context.Context, j Job) error {
	c.mu.Lock()
	if c.hang[j.ID] {
		c.mu.Unlock()
		<-ctx.Done()
		return ctx.Err()
	}
	if c.fail[j.ID] > 0 {
		c.fail[j.ID]--
		c.mu.Unlock()
		return context.DeadlineExceeded
	}
	c.got = append(c.got, j.ID)
	c.mu.Unlock()
	return nil
}

func (c *collector) handled() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.got...)
}

func consume(t *testing.T, q Queue, name string, c *collector) context.CancelFunc {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = q.Consume(ctx, name, 4, c.handle) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return stop
}

// The queues keep the same promises: a job ID is queued once per user, a
// job whose handler fails is delivered again, and every job is handled.
func TestQueues(t *testing.T) {
	for _, tt := range []struct {
		name string
		new  func(t *testing.T) Queue
	}{
		{"memory", func(*testing.T) Queue { q := NewMemory(100); q.RetryAfter = 50 * time.Millisecond; return q }},
		{"redis", func(t *testing.T) Queue {
			srv := redistest.Start(t)
			q, err := NewRedis(context.Background(), srv.Client(t), &RedisOptions{ScanEvery: 50 * time.Millisecond, Logger: quiet})
			require.NoError(t, err)
			return q
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			q := tt.new(t)
			ctx := context.Background()
			for _, j := range []Job{{ID: "1", User: "a"}, {ID: "2", User: "a"}, {ID: "1", User: "b"}} {
				dup, err := q.Enqueue(ctx, j)
				require.NoError(t, err)
				assert.False(t, dup)
			}
			dup, err := q.Enqueue(ctx, Job{ID: "1", User: "a"})
			require.NoError(t, err)
			assert.True(t, dup, "the same user's job ID again")
			c := &collector{fail: map[string]int{"2": 2}}
			consume(t, q, "c1", c)
			require.Eventually(t, func() bool { return len(c.handled()) == 3 }, waitFor, 5*time.Millisecond)
			time.Sleep(100 * time.Millisecond)
			assert.ElementsMatch(t, []string{"1", "2", "1"}, c.handled(), "each once, the failed one after its retries")
		})
	}
}

// A job a consumer took and never acknowledged (it died) is claimed by
// another after ClaimAfter; and the jobs in the group survive a restart of
// a Redis with appendonly.
func TestRedisClaimAndRestart(t *testing.T) {
	srv := redistest.Start(t, redistest.WithAppendOnly())
	q, err := NewRedis(context.Background(), srv.Client(t), &RedisOptions{ClaimAfter: 300 * time.Millisecond, ScanEvery: 50 * time.Millisecond, Logger: quiet})
	require.NoError(t, err)
	ctx := context.Background()
	_, err = q.Enqueue(ctx, Job{ID: "stuck", User: "a"})
	require.NoError(t, err)
	dead := &collector{hang: map[string]bool{"stuck": true}}
	stopDead := consume(t, q, "dead", dead)
	require.Eventually(t, func() bool { p, _, _ := q.Pending(ctx); return p == 1 }, waitFor, 5*time.Millisecond, "taken")
	stopDead() // dies without acknowledging

	// Jobs in the stream, unread, and one pending, when Redis restarts.
	for _, id := range []string{"x", "y"} {
		_, err = q.Enqueue(ctx, Job{ID: id, User: "a"})
		require.NoError(t, err)
	}
	srv.Restart(t)

	alive := &collector{}
	consume(t, q, "alive", alive)
	require.Eventually(t, func() bool { return len(alive.handled()) == 3 }, waitFor, 5*time.Millisecond)
	assert.ElementsMatch(t, []string{"stuck", "x", "y"}, alive.handled())
	require.Eventually(t, func() bool { p, _, _ := q.Pending(ctx); return p == 0 }, waitFor, 5*time.Millisecond, "all acknowledged")
}
