package work

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

var _ Queue = (*Redis)(nil)

// RedisOptions are the Redis queue's options; the zero value is the default.
type RedisOptions struct {
	// Prefix is put before the keys: the stream is Prefix+"queue", the
	// group "workers". Default "jobs:".
	Prefix string
	// MaxLen caps the stream, approximately (XADD MAXLEN ~). Default 100000.
	MaxLen int64
	// ClaimAfter is how long a job may stay unacknowledged at another
	// consumer (a worker that died) before this one claims it with
	// XAUTOCLAIM. Default 30s; keep it above the longest job.
	ClaimAfter time.Duration
	// ScanEvery is how often a consumer looks for jobs it left
	// unacknowledged (its handler failed) and for jobs to claim; a read of
	// new jobs blocks for ScanEvery at most, and 1s. Default 2s.
	ScanEvery time.Duration
	// Logger gets the queue's warnings. Default: slog.Default().
	Logger *slog.Logger
}

// group is the consumer group of the workers.
const group = "workers"

// enqueueScript queues a job once per user and ID: it remembers the ID for
// ARGV[2] seconds and adds the job only if it was not remembered, in one
// atomic step. It returns nil (redis.Nil) for a duplicate.
var enqueueScript = redis.NewScript(`
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then return false end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'job', ARGV[1])
`)

// Redis is a queue on a Redis stream read by a consumer group: Enqueue is
// an XADD, Consume an XREADGROUP loop that acknowledges each job (XACK)
// once its handler returned nil, takes up the jobs it left pending after an
// error or a Redis restart, and claims (XAUTOCLAIM) those a dead consumer
// left for ClaimAfter. With appendonly yes on the Redis server, no job is
// lost when Redis restarts.
type Redis struct {
	rdb    redis.UniversalClient
	stream string
	prefix string
	opts   RedisOptions
}

// NewRedis returns a queue on rdb and creates its consumer group if it does
// not exist. It does not close rdb.
func NewRedis(ctx context.Context, rdb redis.UniversalClient, opts *RedisOptions) (*Redis, error) {
	var o RedisOptions
	if opts != nil {
		o = *opts
	}
	if o.Prefix == "" {
		o.Prefix = "jobs:"
	}
	if o.MaxLen <= 0 {
		o.MaxLen = 100000
	}
	if o.ClaimAfter <= 0 {
		o.ClaimAfter = 30 * time.Second
	}
	if o.ScanEvery <= 0 {
		o.ScanEvery = 2 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	q := &Redis{rdb: rdb, stream: o.Prefix + "queue", prefix: o.Prefix, opts: o}
	if err := q.createGroup(ctx); err != nil {
		return nil, err
	}
	return q, nil
}

func (q *Redis) createGroup(ctx context.Context) error {
	err := q.rdb.XGroupCreateMkStream(ctx, q.stream, group, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("work: create consumer group: %w", err)
	}
	return nil
}

// Enqueue adds j to the stream, once per user and ID within an hour.
func (q *Redis) Enqueue(ctx context.Context, j Job) (bool, error) {
	b, err := json.Marshal(j)
	if err != nil {
		return false, err
	}
	keys := []string{q.stream, q.prefix + "id:" + j.User + "/" + j.ID}
	err = enqueueScript.Run(ctx, q.rdb, keys, b, int(dedupFor/time.Second), q.opts.MaxLen).Err()
	switch {
	case errors.Is(err, redis.Nil):
		return true, nil
	case err != nil:
		return false, fmt.Errorf("work: enqueue: %w", err)
	}
	return false, nil
}

// Consume reads the group as consumer and runs handle for each job, at most
// n at a time, until ctx ends.
func (q *Redis) Consume(ctx context.Context, consumer string, n int, handle Handler) error {
	n = max(n, 1)
	c := &reader{q: q, name: consumer, handle: handle, slots: make(chan struct{}, n), inFlight: map[string]bool{}}
	defer c.wg.Wait()
	var lastScan time.Time
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		if time.Since(lastScan) >= q.opts.ScanEvery {
			if err := c.scan(ctx); err != nil {
				c.pause(ctx, err, &backoff)
				continue
			}
			lastScan = time.Now()
		}
		// Wait for a free slot, then ask for as many jobs as are free.
		select {
		case c.slots <- struct{}{}:
			<-c.slots
		case <-ctx.Done():
			return ctx.Err()
		}
		free := int64(cap(c.slots) - len(c.slots))
		res, err := q.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
			Group: group, Consumer: consumer, Streams: []string{q.stream, ">"}, Count: free, Block: min(time.Second, q.opts.ScanEvery),
		}).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if strings.HasPrefix(err.Error(), "NOGROUP") {
				// Redis lost its data: the jobs are gone; go on with new ones.
				_ = q.createGroup(ctx)
			}
			c.pause(ctx, err, &backoff)
			lastScan = time.Time{} // take up what is pending once Redis is back
			continue
		}
		backoff = 50 * time.Millisecond
		for _, s := range res {
			for _, m := range s.Messages {
				c.dispatch(ctx, m)
			}
		}
	}
	return ctx.Err()
}

// reader is one Consume call's state.
type reader struct {
	q      *Redis
	name   string
	handle Handler
	slots  chan struct{} // one per running handler
	wg     sync.WaitGroup

	mu       sync.Mutex
	inFlight map[string]bool // entry IDs being handled
}

func (c *reader) pause(ctx context.Context, err error, backoff *time.Duration) {
	c.q.opts.Logger.Warn("job queue unavailable", "consumer", c.name, "err", err, "retry", *backoff)
	select {
	case <-time.After(*backoff):
	case <-ctx.Done():
	}
	*backoff = min(*backoff*2, 2*time.Second)
}

// scan dispatches the jobs this consumer holds unacknowledged (a handler
// failed, or Redis restarted before the XACK) and claims those another
// consumer left for ClaimAfter.
func (c *reader) scan(ctx context.Context) error {
	res, err := c.q.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: group, Consumer: c.name, Streams: []string{c.q.stream, "0"}, Count: 100,
	}).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return err
	}
	for _, s := range res {
		for _, m := range s.Messages {
			c.dispatch(ctx, m)
		}
	}
	claimed, _, err := c.q.rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{
		Stream: c.q.stream, Group: group, Consumer: c.name, MinIdle: c.q.opts.ClaimAfter, Start: "0-0", Count: 100,
	}).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return err
	}
	for _, m := range claimed {
		c.dispatch(ctx, m)
	}
	return nil
}

// dispatch runs the handler for m in a goroutine of its own, once a slot is
// free, unless m is being handled already.
func (c *reader) dispatch(ctx context.Context, m redis.XMessage) {
	c.mu.Lock()
	if c.inFlight[m.ID] {
		c.mu.Unlock()
		return
	}
	c.inFlight[m.ID] = true
	c.mu.Unlock()
	var j Job
	raw, _ := m.Values["job"].(string)
	if err := json.Unmarshal([]byte(raw), &j); err != nil {
		// An entry trimmed away (nil values) or not a job: drop it.
		c.q.opts.Logger.Warn("job entry dropped", "entry", m.ID, "err", err)
		c.ack(ctx, m.ID)
		return
	}
	select {
	case c.slots <- struct{}{}:
	case <-ctx.Done():
		c.done(m.ID)
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer func() { <-c.slots }()
		if err := c.handle(ctx, j); err == nil {
			c.ack(ctx, m.ID)
		} else {
			c.done(m.ID) // pending: the next scan takes it up again
		}
	}()
}

func (c *reader) done(id string) {
	c.mu.Lock()
	delete(c.inFlight, id)
	c.mu.Unlock()
}

// ack acknowledges the entry, retrying while Redis is unavailable for up to
// ackTimeout even if ctx ends: the job was handled, and an entry left
// unacknowledged would be handled again.
func (c *reader) ack(ctx context.Context, id string) {
	defer c.done(id)
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ackTimeout)
	defer cancel()
	backoff := 50 * time.Millisecond
	for {
		err := c.q.rdb.XAck(actx, c.q.stream, group, id).Err()
		if err == nil {
			return
		}
		c.q.opts.Logger.Warn("job not acknowledged yet", "entry", id, "err", err)
		select {
		case <-time.After(backoff):
		case <-actx.Done():
			return
		}
		backoff = min(backoff*2, time.Second)
	}
}

// ackTimeout bounds the retries of one XACK.
const ackTimeout = 30 * time.Second

// Pending returns how many jobs were delivered to a consumer and not yet
// acknowledged, and how many are in the stream; for tests and monitoring.
func (q *Redis) Pending(ctx context.Context) (pending, length int64, err error) {
	p, err := q.rdb.XPending(ctx, q.stream, group).Result()
	if err != nil {
		return 0, 0, err
	}
	length, err = q.rdb.XLen(ctx, q.stream).Result()
	return p.Count, length, err
}
