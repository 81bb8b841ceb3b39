package redis

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// ErrInvalidOptions is returned by NewPubSub, NewStreams and Open for
// options they cannot work with.
var ErrInvalidOptions = errors.New("redis backplane: invalid options")

// Options configure a PubSub, and the part of a Streams that works the same
// way (see StreamsOptions). The zero value of every field selects the
// default given in its comment.
type Options struct {
	// Prefix is put in front of every Redis channel name and key, so that
	// several applications (or tests) can share one Redis. Default
	// "wshub:". With a Redis Cluster it must not contain '{' or '}',
	// because the backplane adds a hash tag of its own.
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
	// commands, one round trip each. A Publish that finds a pipeline in
	// flight waits for it and goes out with everything queued meanwhile;
	// pipelines overlap only once 4 messages are queued (MaxBatch/4 when
	// that is less). Default 4.
	Pipelines int

	// MaxBatch is the most commands in one publish pipeline. Default 256.
	MaxBatch int

	// Linger is how long a publish that would go out alone waits for the
	// next one to share its round trip, while the node's publishes come
	// less than half a Linger apart; publishes further apart go out at
	// once, and one that finds a pipeline in flight waits for that
	// instead. Each round trip saved spares Redis a wake-up, a read, a
	// reply and a write to every subscribing node, which at moderate rates
	// is most of its CPU per message; the cost is up to Linger of latency
	// at those rates (about 0.2 ms more at the median with the default).
	// A caller that publishes one message at a time, each after the last
	// returned, soon stops paying it. A negative value turns it off; at
	// most 100ms. Default 500µs.
	Linger time.Duration

	// PresenceTTL is how long an instance of the presence record
	// (backplane.Presence) stays alive after its last RefreshPresence,
	// which the caller repeats every third of it. A node that dies, or is
	// cut off from Redis for longer, has its entries removed by the other
	// nodes starting at most PresenceTTL + PresenceTTL/3 + 1s after its
	// last refresh (the second allows for the clocks of a cluster's
	// masters); the removal then takes time in proportion to its entries
	// (see the package doc, "Presence").
	// At least 100ms. Default 10s.
	PresenceTTL time.Duration

	// Logger receives the backplane's logs. Default slog.Default(). A URL
	// opened with backplane.Open takes it from backplane.WithLogger.
	//
	// The backplane reports its link going down and coming back through
	// backplane.Notifier and logs those changes only at Debug: the hub logs
	// each at Warn, with its node. What needs an operator (a catch-up read
	// that failed, presence that cannot be repaired) is logged at Warn,
	// with the attributes err, channel (the wshub channel, as given to
	// Publish, without the prefix), instance (a backplane's presence
	// instance) and counts such as channels and keys.
	//
	// Logger does not reach go-redis: go-redis v9 (up to v9.23 at least)
	// has no logger per client, only one for the whole process, which
	// prints lines such as "redis: connection pool: failed to dial after 5
	// attempts" to stderr, for the clients the backplane makes too. The
	// backplane never replaces it, since that would change every other
	// go-redis client of the process. An application that wants those
	// lines quiet, or in its own logger, makes the one call itself, once
	// in main before it makes any go-redis client:
	// redis.SetLogger(&logging.VoidLogger{}) (package
	// github.com/redis/go-redis/v9/logging), or redis.SetLogger with its
	// own Printf(ctx, format, args...) adapter (docs/deploy.md has one
	// that logs at Debug).
	Logger *slog.Logger
}

// StreamsOptions configure a Streams: the Options of every backplane of
// this package, and the retention of the channels' logs, which only a
// Streams keeps. The zero value of every field selects the default given in
// its comment.
type StreamsOptions struct {
	Options

	// MaxLen is how many messages each channel's log keeps at least; Redis
	// trims in whole blocks, so a log may hold up to about 100 more.
	// Default 1000.
	MaxLen int

	// MaxAge is how long messages are kept; a channel's log expires MaxAge
	// after its last message. Default 5 minutes.
	MaxAge time.Duration

	// EpochTTL is how long a channel's epoch key (about 100 bytes in Redis)
	// outlives the channel's last message or subscription. The epoch tells
	// a log that was lost (a restart without persistence, a failover to a
	// server without the data) from one that is still the same, so that a
	// node or client is never told it is up to date after a loss. A node
	// that held a channel for longer than EpochTTL without a message in it
	// reports a gap if it is cut off and messages arrive meanwhile. At
	// least MaxAge. Default 24 hours, or MaxAge if that is longer.
	EpochTTL time.Duration
}

// defaultLinger is Options.Linger's default; maxLinger bounds it, as a
// longer wait is a misconfiguration rather than a trade.
const (
	defaultLinger = 500 * time.Microsecond
	maxLinger     = 100 * time.Millisecond
)

// withDefaults returns a copy of o (nil for all defaults) with every zero
// field set to its default, or an error wrapping ErrInvalidOptions.
func (o *Options) withDefaults() (Options, error) {
	var c Options
	if o != nil {
		c = *o
	}
	if c.Prefix == "" {
		c.Prefix = "wshub:"
	}
	if c.ProbeInterval < 0 || c.ProbeTimeout < 0 || c.Shards < 0 || c.Pipelines < 0 || c.MaxBatch < 0 || c.PresenceTTL < 0 {
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
	switch {
	case c.Linger == 0:
		c.Linger = defaultLinger
	case c.Linger < 0:
		c.Linger = 0
	case c.Linger > maxLinger:
		return c, fmt.Errorf("%w: Linger %v is above %v", ErrInvalidOptions, c.Linger, maxLinger)
	}
	if c.PresenceTTL == 0 {
		c.PresenceTTL = 10 * time.Second
	}
	if c.PresenceTTL < presenceMinTTL {
		return c, fmt.Errorf("%w: PresenceTTL %v is below %v", ErrInvalidOptions, c.PresenceTTL, presenceMinTTL)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c, nil
}

// withDefaults returns a copy of o (nil for all defaults) with every zero
// field, of the Options too, set to its default, or an error wrapping
// ErrInvalidOptions.
func (o *StreamsOptions) withDefaults() (StreamsOptions, error) {
	var c StreamsOptions
	if o != nil {
		c = *o
	}
	common, err := c.Options.withDefaults()
	if err != nil {
		return c, err
	}
	c.Options = common
	if c.MaxLen < 0 || c.MaxAge < 0 || c.EpochTTL < 0 {
		return c, fmt.Errorf("%w: negative value", ErrInvalidOptions)
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
	return c, nil
}
