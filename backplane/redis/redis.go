package redis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/wshub/wshub/backplane"
)

// ErrInvalidOptions is returned by New for options it cannot work with.
var ErrInvalidOptions = errors.New("redis backplane: invalid options")

// Mode selects how messages travel through Redis.
type Mode string

// The modes of the Redis backplane.
const (
	// ModePubSub uses Redis pub/sub: lowest latency, at-most-once. Messages
	// published while a node is cut off from Redis are lost to that node,
	// and the loss is reported as an Event with Gap set.
	ModePubSub Mode = "pubsub"

	// ModeStreams keeps a capped log (a Redis stream) per channel and uses
	// pub/sub only as the wake-up. A node cut off from Redis catches up from
	// the logs when it comes back, in order and without duplicates, and
	// reports a gap only when retention dropped what it missed. Every
	// message has an offset in its channel, and clients can resume from one
	// (see backplane.Log).
	ModeStreams Mode = "streams"
)

// Options configure a Backplane. The zero value of every field selects the
// default given in its comment.
type Options struct {
	// Mode selects the delivery mode. Default ModePubSub.
	Mode Mode

	// Prefix is put in front of every Redis channel name, so that several
	// applications (or tests) can share one Redis. Default "wshub:". With a
	// Redis Cluster it must not contain '{' or '}', because the backplane
	// adds a hash tag of its own.
	Prefix string

	// ProbeInterval is how often the backplane publishes a probe to itself
	// to check that its subscriptions still deliver. Default 1s.
	ProbeInterval time.Duration

	// ProbeTimeout is how long a probe may take to come back before the
	// subscription is taken for dead, reported down and rebuilt. Default
	// 3 × ProbeInterval.
	ProbeTimeout time.Duration

	// Shards is, with a Redis Cluster, the number of hash-tagged shard
	// channel groups the node's channels are spread over. Each group is one
	// slot and has its own subscription connection to the master that owns
	// it, so traffic spreads over the cluster's masters. Ignored without a
	// cluster. Default 16.
	Shards int

	// Pipelines is how many publish pipelines may be in flight at once.
	// Concurrent Publish calls are batched into pipelines of up to MaxBatch
	// commands, one round trip each. Default 4.
	Pipelines int

	// MaxBatch is the most commands in one publish pipeline. Default 256.
	MaxBatch int

	// MaxLen is, in ModeStreams, how many messages each channel's log keeps
	// at least; Redis trims in whole blocks, so a log may hold up to about
	// 100 more. Default 1000.
	MaxLen int

	// MaxAge is, in ModeStreams, how long messages are kept; a channel's log
	// expires MaxAge after its last message. Default 5 minutes.
	MaxAge time.Duration

	// EpochTTL is, in ModeStreams, how long a channel's epoch key (about
	// 100 bytes in Redis) outlives the channel's last message or
	// subscription. The epoch tells a log that was lost (a restart without
	// persistence, a failover to a server without the data) from one that
	// is still the same, so that a node or client is never told it is up
	// to date after a loss. A node that held a channel for longer than
	// EpochTTL without a message in it reports a gap if it is cut off and
	// messages arrive meanwhile. At least MaxAge. Default 24 hours.
	EpochTTL time.Duration

	// Logger receives the backplane's logs. Default slog.Default().
	Logger *slog.Logger
}

func (o *Options) withDefaults() (Options, error) {
	var c Options
	if o != nil {
		c = *o
	}
	if c.Mode == "" {
		c.Mode = ModePubSub
	}
	if c.Mode != ModePubSub && c.Mode != ModeStreams {
		return c, fmt.Errorf("%w: unknown mode %q", ErrInvalidOptions, c.Mode)
	}
	if c.Prefix == "" {
		c.Prefix = "wshub:"
	}
	if c.ProbeInterval < 0 || c.ProbeTimeout < 0 || c.Shards < 0 || c.Pipelines < 0 || c.MaxBatch < 0 ||
		c.MaxLen < 0 || c.MaxAge < 0 || c.EpochTTL < 0 {
		return c, fmt.Errorf("%w: negative value", ErrInvalidOptions)
	}
	if c.ProbeInterval == 0 {
		c.ProbeInterval = time.Second
	}
	if c.ProbeTimeout == 0 {
		c.ProbeTimeout = 3 * c.ProbeInterval
	}
	if c.Shards == 0 {
		c.Shards = 16
	}
	if c.Pipelines == 0 {
		c.Pipelines = 4
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = 256
	}
	if c.MaxLen == 0 {
		c.MaxLen = 1000
	}
	if c.MaxAge == 0 {
		c.MaxAge = 5 * time.Minute
	}
	if c.EpochTTL == 0 {
		c.EpochTTL = max(24*time.Hour, c.MaxAge)
	}
	if c.EpochTTL < c.MaxAge {
		return c, fmt.Errorf("%w: EpochTTL %v is shorter than MaxAge %v", ErrInvalidOptions, c.EpochTTL, c.MaxAge)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c, nil
}

// Stats are counters of one Backplane since it was made.
type Stats struct {
	Published     uint64 // messages Redis accepted from this node
	PublishErrors uint64 // publishes that failed
	Received      uint64 // messages handed to the handler
	Downs         uint64 // times the node stopped receiving from Redis
	Restores      uint64 // times it receives again after a Down
	Gaps          uint64 // restores after which messages may be missing
	Resubscribes  uint64 // subscription connections rebuilt
	Duplicates    uint64 // ModeStreams: messages dropped as already delivered
	CaughtUp      uint64 // ModeStreams: messages delivered from the logs after an outage
	// Malformed counts what arrived on a held channel that no node of
	// this backplane published and that was dropped: in ModeStreams a
	// message that is not a wake-up, or a wake-up whose entry ID is ahead
	// of the Redis server's clock.
	Malformed uint64
}

// Backplane is a wshub backplane on Redis pub/sub. Make one per node with
// New, or with backplane.Open and a redis:// URL.
//
// With a *goredis.ClusterClient it uses sharded pub/sub (SSUBSCRIBE and
// SPUBLISH, Redis 7 or later), so that each message is handled only by the
// master that owns its channel's slot.
type Backplane struct {
	client    goredis.UniversalClient
	ownClient bool // opened from a URL: Close closes the client
	// busClient makes the subscription connections and sends the
	// publishes: a client of the backplane's own, a copy of client's
	// options that speaks RESP2 and never sends a command again by itself.
	// Reads go through client.
	busClient goredis.UniversalClient
	sharded   bool
	opts      Options
	log       *slog.Logger
	id        string // random, names this node's probe channels

	ctx    context.Context // ends on Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	pub *publisher

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
		duplicates, caughtUp, malformed     atomic.Uint64
	}
	clock serverClock // ModeStreams: the Redis server's clock, as seen from here
}

var (
	_ backplane.Backplane = (*Backplane)(nil)
	_ backplane.Notifier  = (*Backplane)(nil)
	_ backplane.Checker   = (*Backplane)(nil)
	_ backplane.Log       = (*Backplane)(nil)
)

// New returns a backplane on client. It does no I/O: the connections are
// made by Start and Subscribe. opts may be nil for all defaults.
//
// New never closes client, nor does Close: the caller owns it and closes it
// after the backplane.
func New(client goredis.UniversalClient, opts *Options) (*Backplane, error) {
	if client == nil {
		return nil, fmt.Errorf("%w: nil client", ErrInvalidOptions)
	}
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	_, sharded := client.(*goredis.ClusterClient)
	if sharded && strings.ContainsAny(o.Prefix, "{}") {
		return nil, fmt.Errorf("%w: prefix %q contains a brace", ErrInvalidOptions, o.Prefix)
	}
	var id [8]byte
	_, _ = rand.Read(id[:])
	b := &Backplane{
		client:  client,
		sharded: sharded,
		opts:    o,
		log:     o.Logger,
		id:      hex.EncodeToString(id[:]),
		subs:    make(map[int]*subscriber),
	}
	b.busClient = busClientOf(client)
	b.ctx, b.cancel = context.WithCancel(context.Background())
	b.pub = newPublisher(b)
	return b, nil
}

// Notify sets the function that receives the backplane's Events: down when
// the node stops receiving from Redis, restored when it receives again, with
// Gap set when messages may have been lost in between. fn must not block.
func (b *Backplane) Notify(fn func(backplane.Event)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.notify = fn
}

// Start sets the handler and begins receiving. It opens the subscription
// connection in the background: a Redis that is down at Start is reported
// as an EventDown and retried, not returned as an error.
func (b *Backplane) Start(h backplane.Handler) error {
	if h == nil {
		return errors.New("redis backplane: nil handler")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.closed:
		return backplane.ErrClosed
	case b.started:
		return backplane.ErrStarted
	}
	b.started = true
	b.handler = h
	if !b.sharded {
		b.subscriberLocked(0)
	}
	b.wg.Add(1)
	go b.probeLoop()
	return nil
}

// Publish hands payload to Redis for every node subscribed to channel.
// Concurrent calls are pipelined. It returns an error wrapping
// backplane.ErrUnavailable when Redis refuses the message or cannot be
// reached, at once while the backplane knows its link to Redis is down, and
// one wrapping ctx.Err() when ctx ends first; in that case the message may
// or may not have been published.
func (b *Backplane) Publish(ctx context.Context, channel string, payload []byte) error {
	if channel == "" {
		return backplane.ErrInvalidChannel
	}
	if b.isClosed() {
		return backplane.ErrClosed
	}
	shard := b.shard(channel)
	if err := b.shardDown(shard); err != nil {
		return err
	}
	pre := b.shardPrefix(shard)
	rc := pre + channel
	if b.opts.Mode != ModeStreams {
		return b.pub.publish(ctx, rc, "", "", payload)
	}
	return b.pub.publish(ctx, rc, logKey(pre, rc), epochKey(pre, rc), payload)
}

// Subscribe adds channels to this node's interest and returns once Redis
// has confirmed every one of them. While the node's link to Redis is down
// it fails at once with an error wrapping backplane.ErrUnavailable.
func (b *Backplane) Subscribe(ctx context.Context, channels ...string) error {
	groups, err := b.group(channels)
	if err != nil {
		return err
	}
	b.mu.Lock()
	switch {
	case b.closed:
		b.mu.Unlock()
		return backplane.ErrClosed
	case !b.started:
		b.mu.Unlock()
		return errors.New("redis backplane: Subscribe before Start")
	}
	type job struct {
		s     *subscriber
		names []string
	}
	jobs := make([]job, 0, len(groups))
	for shard, names := range groups {
		jobs = append(jobs, job{b.subscriberLocked(shard), names})
	}
	b.mu.Unlock()

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
func (b *Backplane) Unsubscribe(ctx context.Context, channels ...string) error {
	groups, err := b.group(channels)
	if err != nil {
		return err
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return backplane.ErrClosed
	}
	var list []*subscriber
	var names [][]string
	for shard, ns := range groups {
		if s := b.subs[shard]; s != nil {
			list = append(list, s)
			names = append(names, ns)
		}
	}
	b.mu.Unlock()
	for i, s := range list {
		s.unsubscribe(ctx, names[i])
	}
	return nil
}

// Health reports whether the backplane is delivering now: nil when every
// subscription connection is up and the latest self-published probe came
// back in time, otherwise an error wrapping backplane.ErrUnavailable.
func (b *Backplane) Health() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return backplane.ErrClosed
	}
	if !b.started {
		return fmt.Errorf("%w: not started", backplane.ErrUnavailable)
	}
	now := time.Now()
	for shard, s := range b.subs {
		if err := s.health(now); err != nil {
			return fmt.Errorf("%w: shard %d: %w", backplane.ErrUnavailable, shard, err)
		}
	}
	return nil
}

// Stats returns the backplane's counters.
func (b *Backplane) Stats() Stats {
	return Stats{
		Published:     b.stats.published.Load(),
		PublishErrors: b.stats.publishErrors.Load(),
		Received:      b.stats.received.Load(),
		Downs:         b.stats.downs.Load(),
		Restores:      b.stats.restores.Load(),
		Gaps:          b.stats.gaps.Load(),
		Resubscribes:  b.stats.resubscribes.Load(),
		Duplicates:    b.stats.duplicates.Load(),
		CaughtUp:      b.stats.caughtUp.Load(),
		Malformed:     b.stats.malformed.Load(),
	}
}

// Close stops receiving and publishing, closes the subscription
// connections and waits for the backplane's goroutines. Publish calls in
// flight return an error wrapping backplane.ErrClosed. It does not close a
// client given to New. Calling Close again returns nil.
func (b *Backplane) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	subs := make([]*subscriber, 0, len(b.subs))
	for _, s := range b.subs {
		subs = append(subs, s)
	}
	b.mu.Unlock()

	b.cancel()
	for _, s := range subs {
		s.close()
	}
	b.pub.close()
	b.wg.Wait()
	if b.busClient != b.client {
		_ = b.busClient.Close()
	}
	if b.ownClient {
		if err := b.client.Close(); err != nil {
			return fmt.Errorf("redis backplane: close client: %w", err)
		}
	}
	return nil
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

func (b *Backplane) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

// subscriberLocked returns the subscriber of shard, starting it if needed.
func (b *Backplane) subscriberLocked(shard int) *subscriber {
	s := b.subs[shard]
	if s == nil {
		s = newSubscriber(b, shard)
		b.subs[shard] = s
		b.wg.Add(1)
		go s.run()
	}
	return s
}

// shard returns the shard of a wshub channel: always 0 without a cluster.
func (b *Backplane) shard(channel string) int {
	if !b.sharded {
		return 0
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(channel))
	return int(h.Sum32() % uint32(b.opts.Shards))
}

// shardPrefix is what every Redis channel of shard starts with.
func (b *Backplane) shardPrefix(shard int) string {
	if !b.sharded {
		return b.opts.Prefix
	}
	return b.opts.Prefix + "{" + strconv.Itoa(shard) + "}"
}

// names maps a wshub channel to its shard's prefix and its Redis channel.
func (b *Backplane) names(channel string) (prefix, redisChannel string) {
	prefix = b.shardPrefix(b.shard(channel))
	return prefix, prefix + channel
}

// shardDown returns an error wrapping backplane.ErrUnavailable while the
// subscription connection of shard is known to be down, so that a publish
// fails at once instead of waiting for the client's dial retries.
func (b *Backplane) shardDown(shard int) error {
	b.mu.Lock()
	s := b.subs[shard]
	b.mu.Unlock()
	if s == nil {
		return nil
	}
	return s.downErr()
}

// group validates channels and maps them to Redis names, by shard.
func (b *Backplane) group(channels []string) (map[int][]string, error) {
	groups := make(map[int][]string, 1)
	for _, ch := range channels {
		if ch == "" {
			return nil, backplane.ErrInvalidChannel
		}
		sh := b.shard(ch)
		groups[sh] = append(groups[sh], b.shardPrefix(sh)+ch)
	}
	return groups, nil
}

// deliver hands a message of a Redis channel, with its offset in
// ModeStreams, to the handler.
func (b *Backplane) deliver(s *subscriber, redisChannel, offset, payload string) {
	b.stats.received.Add(1)
	b.handler(backplane.Message{Channel: strings.TrimPrefix(redisChannel, s.prefix), Offset: offset, Payload: []byte(payload)})
}

// setDown records that s stopped receiving, and reports the first such
// change as an EventDown.
func (b *Backplane) setDown(err error) {
	b.mu.Lock()
	b.down++
	first := b.down == 1 && !b.closed
	fn := b.notify
	b.mu.Unlock()
	if first {
		b.stats.downs.Add(1)
		b.log.Warn("redis backplane: down", "err", err)
		if fn != nil {
			fn(backplane.Event{Kind: backplane.EventDown, Err: err})
		}
	}
}

// setUp records that a subscriber that was down receives again; when none
// is down any more it reports EventRestored. gap says whether that
// subscriber had delivered before its outage, so messages may be lost.
func (b *Backplane) setUp(gap bool) {
	b.mu.Lock()
	b.down--
	b.gap = b.gap || gap
	last := b.down == 0 && !b.closed
	gap = b.gap
	if last {
		b.gap = false
	}
	fn := b.notify
	b.mu.Unlock()
	if last {
		b.stats.restores.Add(1)
		if gap {
			b.stats.gaps.Add(1)
		}
		b.log.Warn("redis backplane: restored", "gap", gap)
		if fn != nil {
			fn(backplane.Event{Kind: backplane.EventRestored, Gap: gap})
		}
	}
}

// probeLoop publishes a probe to every subscriber once per ProbeInterval
// and rebuilds subscriptions whose probes do not come back.
func (b *Backplane) probeLoop() {
	defer b.wg.Done()
	t := time.NewTicker(b.opts.ProbeInterval)
	defer t.Stop()
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-t.C:
		}
		b.mu.Lock()
		subs := make([]*subscriber, 0, len(b.subs))
		for _, s := range b.subs {
			subs = append(subs, s)
		}
		b.mu.Unlock()
		now := time.Now()
		for _, s := range subs {
			s.probe(now)
		}
		if b.opts.Mode == ModeStreams {
			ctx, cancel := context.WithTimeout(b.ctx, b.opts.ProbeInterval)
			b.syncClock(ctx)
			cancel()
		}
	}
}

// syncClock measures the Redis server's clock against this process's.
func (b *Backplane) syncClock(ctx context.Context) {
	sent := time.Now()
	if t, err := b.client.Time(ctx).Result(); err == nil {
		b.clock.observe(t, sent)
	}
}
