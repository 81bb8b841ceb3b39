package redis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/wshub/wshub/backplane"
)

// mode is what a PubSub and a Streams do differently: the hooks that the
// core calls where they part ways. Each of the two types implements it.
type mode interface {
	// send hands payload, for the Redis channel rc of the shard whose
	// names start with pre, to the core's publisher and waits for Redis
	// to take it.
	send(ctx context.Context, pre, rc string, payload []byte) error
	// shardHooks returns what the subscriber of the shard whose names
	// start with pre leaves to the backplane's type.
	shardHooks(pre string) shardMode
	// tick runs on the probe goroutine after each round of probes, bounded
	// by ctx.
	tick(ctx context.Context)
}

// shardMode is what one shard's subscriber leaves to the backplane's type.
type shardMode interface {
	// prepare runs before Subscribe adds names (Redis channels of the
	// shard), outside the subscriber's lock. The subscriber then calls
	// hold under its lock for each name it adds.
	prepare(ctx context.Context, names []string) (hold func(name string), err error)
	// drop is called under the subscriber's lock for each name that
	// Unsubscribe removes.
	drop(name string)
	// message handles a message that arrived on a held Redis channel, on
	// the receiving goroutine. catchingUp is set while a generation that
	// follows an outage has not come up yet.
	message(name string, payload []byte, catchingUp bool)
	// up is called on the receiving goroutine when a generation comes up,
	// before anything live is handed to message. gap says whether an
	// earlier generation had been up, so that messages may have been
	// missed; up returns whether some may still be missing. busy tells the
	// subscriber that it is at work, so that a long catch-up is not taken
	// for a lost probe.
	up(gap bool, busy func()) bool
}

// core is what a PubSub and a Streams share: the subscribers, the
// publisher, the probes, the events and the lifecycle. It calls its mode
// where the two types differ.
type core struct {
	naming
	client    goredis.UniversalClient
	ownClient bool // opened from a URL: Close closes the client
	// busClient makes the subscription connections and sends the
	// publishes: a client of the backplane's own, a copy of client's
	// options that speaks RESP2 and never sends a command again by itself.
	// Reads go through client.
	busClient goredis.UniversalClient
	opts      Options
	log       *slog.Logger
	id        string // random, names this node's probe channels
	mode      mode

	ctx    context.Context // ends on Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	pub  *publisher
	pres *presence // the presence record (presence.go)

	mu      sync.Mutex
	started bool
	closed  bool
	handler backplane.Handler
	notify  func(backplane.Event)
	subs    map[int]*subscriber // by shard; shard 0 without a cluster
	down    int                 // subscribers currently down
	gap     bool                // a subscriber that is or was down lost messages

	stats struct {
		published, publishErrors, received  atomic.Uint64
		downs, restores, gaps, resubscribes atomic.Uint64
	}
}

// init sets c up on client with o (defaults applied), calling m for what
// depends on the backplane's type, and logs for the messages that go to a
// log (nil for none). It does no I/O.
func (c *core) init(client goredis.UniversalClient, o Options, m mode, logs logScript) error {
	if client == nil {
		return fmt.Errorf("%w: nil client", ErrInvalidOptions)
	}
	_, sharded := client.(*goredis.ClusterClient)
	if sharded && strings.ContainsAny(o.Prefix, "{}") {
		return fmt.Errorf("%w: prefix %q contains a brace", ErrInvalidOptions, o.Prefix)
	}
	var id [8]byte
	_, _ = rand.Read(id[:])
	c.naming = naming{prefix: o.Prefix, sharded: sharded, shards: o.Shards}
	c.client = client
	c.busClient = busClientOf(client)
	c.opts = o
	c.log = o.Logger
	c.id = hex.EncodeToString(id[:])
	c.mode = m
	c.subs = make(map[int]*subscriber)
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.pub = newPublisher(publisherConfig{
		ctx:       c.ctx,
		client:    c.busClient,
		sharded:   sharded,
		pipelines: o.Pipelines,
		maxBatch:  o.MaxBatch,
		linger:    o.Linger,
		logs:      logs,
		done:      c.countPublish,
	})
	c.pres = newPresence(presenceConfig{
		write: c.busClient, read: client, prefix: o.Prefix, sharded: sharded,
		ttl: o.PresenceTTL, id: c.id, ctx: c.ctx, log: o.Logger,
	})
	return nil
}

// Notify sets the function that receives the backplane's Events: down when
// the node stops receiving from Redis, restored when it receives again, with
// Gap set when messages may have been lost in between. fn must not block.
func (c *core) Notify(fn func(backplane.Event)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.notify = fn
}

// Start sets the handler and begins receiving. It opens the subscription
// connection in the background: a Redis that is down at Start is reported
// as an EventDown and retried, not returned as an error.
func (c *core) Start(h backplane.Handler) error {
	if h == nil {
		return errors.New("redis backplane: nil handler")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.closed:
		return backplane.ErrClosed
	case c.started:
		return backplane.ErrStarted
	}
	c.started = true
	c.handler = h
	if !c.sharded {
		c.subscriberLocked(0)
	}
	c.spawn(func() {
		runProbes(c.ctx, probeConfig{
			interval: c.opts.ProbeInterval,
			shards:   c.subscribers,
			after:    c.mode.tick,
		})
	})
	return nil
}

// Publish hands payload to Redis for every node subscribed to channel.
// Concurrent calls are pipelined. It returns an error wrapping
// backplane.ErrUnavailable when Redis refuses the message or cannot be
// reached, at once while the backplane knows its link to Redis is down, and
// one wrapping ctx.Err() when ctx ends first; in that case the message may
// or may not have been published.
func (c *core) Publish(ctx context.Context, channel string, payload []byte) error {
	if err := checkChannel(channel); err != nil {
		return err
	}
	if c.isClosed() {
		return backplane.ErrClosed
	}
	shard := c.shard(channel)
	if err := c.shardDown(shard); err != nil {
		c.stats.publishErrors.Add(1)
		return err
	}
	pre := c.shardPrefix(shard)
	return c.mode.send(ctx, pre, pre+channel, payload)
}

// Subscribe adds channels to this node's interest and returns once Redis
// has confirmed every one of them. While the node's link to Redis is down
// it fails at once with an error wrapping backplane.ErrUnavailable.
func (c *core) Subscribe(ctx context.Context, channels ...string) error {
	groups, err := c.group(channels)
	if err != nil {
		return err
	}
	c.mu.Lock()
	switch {
	case c.closed:
		c.mu.Unlock()
		return backplane.ErrClosed
	case !c.started:
		c.mu.Unlock()
		return errors.New("redis backplane: Subscribe before Start")
	}
	type job struct {
		s     *subscriber
		names []string
	}
	jobs := make([]job, 0, len(groups))
	for shard, names := range groups {
		jobs = append(jobs, job{c.subscriberLocked(shard), names})
	}
	c.mu.Unlock()

	if len(jobs) == 1 {
		return jobs[0].s.subscribe(ctx, jobs[0].names)
	}
	errs := make([]error, len(jobs))
	var wg sync.WaitGroup
	for i, j := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = j.s.subscribe(ctx, j.names)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Unsubscribe removes channels from this node's interest. Messages that
// arrive for them afterwards are dropped; it does not wait for Redis.
func (c *core) Unsubscribe(ctx context.Context, channels ...string) error {
	groups, err := c.group(channels)
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return backplane.ErrClosed
	}
	var list []*subscriber
	var names [][]string
	for shard, ns := range groups {
		if s := c.subs[shard]; s != nil {
			list = append(list, s)
			names = append(names, ns)
		}
	}
	c.mu.Unlock()
	for i, s := range list {
		s.unsubscribe(ctx, names[i])
	}
	return nil
}

// Health reports whether the backplane is delivering now: nil when every
// subscription connection is up and the latest self-published probe came
// back in time, otherwise an error wrapping backplane.ErrUnavailable.
func (c *core) Health() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return backplane.ErrClosed
	}
	if !c.started {
		return fmt.Errorf("%w: not started", backplane.ErrUnavailable)
	}
	now := time.Now()
	for shard, s := range c.subs {
		if err := s.health(now); err != nil {
			return fmt.Errorf("%w: shard %d: %w", backplane.ErrUnavailable, shard, err)
		}
	}
	return nil
}

// Close stops receiving and publishing, closes the subscription
// connections and waits for the backplane's goroutines. Publish calls in
// flight return an error wrapping backplane.ErrClosed. It does not close a
// client given to NewPubSub or NewStreams. Calling Close again returns nil.
func (c *core) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	subs := make([]*subscriber, 0, len(c.subs))
	for _, s := range c.subs {
		subs = append(subs, s)
	}
	c.mu.Unlock()

	c.cancel()
	c.pres.close()
	for _, s := range subs {
		s.close()
	}
	c.pub.close()
	c.wg.Wait()
	if c.busClient != c.client {
		_ = c.busClient.Close()
	}
	if c.ownClient {
		if err := c.client.Close(); err != nil {
			return fmt.Errorf("redis backplane: close client: %w", err)
		}
	}
	return nil
}

// Stats are the counters that every backplane of this package keeps, since
// it was made. A Streams keeps more (StreamsStats).
type Stats struct {
	Published     uint64 // messages Redis accepted from this node
	PublishErrors uint64 // publishes that failed
	Received      uint64 // messages handed to the handler
	Downs         uint64 // times the node stopped receiving from Redis
	Restores      uint64 // times it receives again after a Down
	Gaps          uint64 // restores after which messages may be missing
	Resubscribes  uint64 // subscription connections rebuilt
}

// commonStats returns the counters of the core.
func (c *core) commonStats() Stats {
	return Stats{
		Published:     c.stats.published.Load(),
		PublishErrors: c.stats.publishErrors.Load(),
		Received:      c.stats.received.Load(),
		Downs:         c.stats.downs.Load(),
		Restores:      c.stats.restores.Load(),
		Gaps:          c.stats.gaps.Load(),
		Resubscribes:  c.stats.resubscribes.Load(),
	}
}

// countPublish counts the outcome of one publish.
func (c *core) countPublish(err error) {
	if err != nil {
		c.stats.publishErrors.Add(1)
	} else {
		c.stats.published.Add(1)
	}
}

// busClientOf returns the client for subscriptions and publishes, made
// from client's options:
//   - It speaks RESP2, where pub/sub messages are plain replies: go-redis
//     releases before v9.21 can drop a RESP3 push message whose header
//     straddles a read buffer boundary (go-redis issue 3839), and a
//     backplane must not lose messages to that.
//   - It never retries a command (MaxRetries -1): a publish whose
//     connection broke after Redis ran it would otherwise be published
//     twice. A failed publish is reported to the caller, who decides.
//   - It keeps the backplane's connections out of the caller's pool.
//
// Clients of other types are used as they are.
func busClientOf(client goredis.UniversalClient) goredis.UniversalClient {
	switch c := client.(type) {
	case *goredis.Client:
		o := *c.Options()
		o.Protocol = 2
		o.MaxRetries = -1
		return goredis.NewClient(&o)
	case *goredis.ClusterClient:
		o := *c.Options()
		o.Protocol = 2
		o.MaxRetries = -1
		return goredis.NewClusterClient(&o)
	}
	return client
}

func (c *core) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// spawn runs f on a goroutine that Close waits for.
func (c *core) spawn(f func()) {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		f()
	}()
}

// subscriberLocked returns the subscriber of shard, starting it if needed.
func (c *core) subscriberLocked(shard int) *subscriber {
	s := c.subs[shard]
	if s == nil {
		pre := c.shardPrefix(shard)
		s = newSubscriber(subscriberConfig{
			ctx:           c.ctx,
			client:        c.busClient,
			sharded:       c.sharded,
			probeChannel:  probeChannel(pre, c.id),
			probeInterval: c.opts.ProbeInterval,
			probeTimeout:  c.opts.ProbeTimeout,
			mode:          c.mode.shardHooks(pre),
			publish:       c.pub.publishPlain,
			spawn:         c.spawn,
			down:          c.subscriberDown,
			up:            c.setUp,
		})
		c.subs[shard] = s
		c.spawn(s.run)
	}
	return s
}

// subscribers returns the subscribers of every shard started so far.
func (c *core) subscribers() []*subscriber {
	c.mu.Lock()
	defer c.mu.Unlock()
	subs := make([]*subscriber, 0, len(c.subs))
	for _, s := range c.subs {
		subs = append(subs, s)
	}
	return subs
}

// shardDown returns an error wrapping backplane.ErrUnavailable while the
// subscription connection of shard is known to be down, so that a publish
// fails at once instead of waiting for the client's dial retries.
func (c *core) shardDown(shard int) error {
	c.mu.Lock()
	s := c.subs[shard]
	c.mu.Unlock()
	if s == nil {
		return nil
	}
	return s.downErr()
}

// deliver hands a message of a Redis channel of shard prefix pre, with its
// offset when it has one, to the handler.
func (c *core) deliver(pre, redisChannel, offset string, payload []byte) {
	c.stats.received.Add(1)
	c.handler(backplane.Message{Channel: strings.TrimPrefix(redisChannel, pre), Offset: offset, Payload: payload})
}

// subscriberDown records that a subscriber threw its connection away
// because of err, to build another.
func (c *core) subscriberDown(err error) {
	c.stats.resubscribes.Add(1)
	c.setDown(err)
}

// setDown records that a subscriber stopped receiving, and reports the
// first such change as an EventDown.
func (c *core) setDown(err error) {
	c.mu.Lock()
	c.down++
	first := c.down == 1 && !c.closed
	fn := c.notify
	c.mu.Unlock()
	if first {
		c.stats.downs.Add(1)
		// Debug: the hub logs the event at Warn, with its node, once.
		c.log.Debug("redis backplane: down", "err", err)
		if fn != nil {
			fn(backplane.Event{Kind: backplane.EventDown, Err: err})
		}
	}
}

// setUp records that a subscriber that was down receives again; when none
// is down any more it reports EventRestored. gap says whether that
// subscriber may have missed messages during its outage.
func (c *core) setUp(gap bool) {
	c.mu.Lock()
	c.down--
	c.gap = c.gap || gap
	last := c.down == 0 && !c.closed
	gap = c.gap
	if last {
		c.gap = false
	}
	fn := c.notify
	c.mu.Unlock()
	if last {
		c.stats.restores.Add(1)
		if gap {
			c.stats.gaps.Add(1)
		}
		c.log.Debug("redis backplane: restored", "gap", gap)
		if fn != nil {
			fn(backplane.Event{Kind: backplane.EventRestored, Gap: gap})
		}
	}
}
