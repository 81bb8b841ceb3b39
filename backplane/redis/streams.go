package redis

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/wshub/wshub/backplane"
)

// Streams is a wshub backplane that keeps a capped log (a Redis stream) per
// channel and uses pub/sub only as the wake-up. A node cut off from Redis
// catches up from the logs when it comes back, in order and without
// duplicates, and reports a gap only when retention dropped what it missed
// or the log was lost. Every message has an offset in its channel, and
// clients can resume from one: a Streams is a backplane.Log.
//
// Make one per node with NewStreams, or with backplane.Open and a
// redis:// URL with mode=streams. With a *goredis.ClusterClient it uses
// sharded pub/sub (SSUBSCRIBE and SPUBLISH, Redis 7 or later), and every
// channel's log lives in the slot of its channel.
type Streams struct {
	core
	maxLen   int           // StreamsOptions.MaxLen
	maxAge   time.Duration // StreamsOptions.MaxAge
	epochTTL time.Duration // StreamsOptions.EpochTTL

	clock    serverClock // the Redis server's clock, as seen from here
	logStats struct {
		duplicates, caughtUp, malformed atomic.Uint64
	}
}

var (
	_ backplane.Backplane = (*Streams)(nil)
	_ backplane.Notifier  = (*Streams)(nil)
	_ backplane.Checker   = (*Streams)(nil)
	_ backplane.Log       = (*Streams)(nil)
)

// NewStreams returns a Streams backplane on client. It does no I/O: the
// connections are made by Start and Subscribe. opts may be nil for all
// defaults.
//
// Neither NewStreams nor Close ever closes client: the caller owns it and
// closes it after the backplane.
func NewStreams(client goredis.UniversalClient, opts *StreamsOptions) (*Streams, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Streams{maxLen: o.MaxLen, maxAge: o.MaxAge, epochTTL: o.EpochTTL}
	if err := s.core.init(client, o.Options, s, s); err != nil {
		return nil, err
	}
	return s, nil
}

// StreamsStats are the counters of a Streams since it was made: those of
// every backplane of this package, and those of its logs.
type StreamsStats struct {
	Stats
	Duplicates uint64 // messages dropped as already delivered
	CaughtUp   uint64 // messages delivered from the logs after an outage
	// Malformed counts what arrived on a held channel that no node of
	// this backplane published and that was dropped: a message that is
	// not a wake-up, or a wake-up whose entry ID is ahead of the Redis
	// server's clock.
	Malformed uint64
}

// Stats returns the backplane's counters.
func (s *Streams) Stats() StreamsStats {
	return StreamsStats{
		Stats:      s.commonStats(),
		Duplicates: s.logStats.duplicates.Load(),
		CaughtUp:   s.logStats.caughtUp.Load(),
		Malformed:  s.logStats.malformed.Load(),
	}
}

// Read returns up to limit messages of channel published after offset,
// oldest first, with their offsets. It returns an error wrapping
// backplane.ErrNotRetained when messages after offset may already have
// been dropped by retention or lost with the log (offset is of an older
// epoch), and one wrapping backplane.ErrInvalidOffset for an offset this
// backplane did not hand out, including one beyond the log's last entry.
// An empty offset reads from the oldest message retained.
func (s *Streams) Read(ctx context.Context, channel, offset string, limit int) ([]backplane.Entry, error) {
	if channel == "" {
		return nil, backplane.ErrInvalidChannel
	}
	if limit <= 0 {
		return nil, errors.New("redis backplane: Read limit must be positive")
	}
	if s.isClosed() {
		return nil, backplane.ErrClosed
	}
	pre, rc := s.names(channel)
	key, ekey := logKey(pre, rc), epochKey(pre, rc)
	var page pageResult
	if offset == "" {
		res, err := s.readRange(ctx, key, ekey, "-", limit)
		if err != nil {
			return nil, err
		}
		page.entries = res.entries
		page.epoch, _, _ = parseMeta(res.meta)
	} else {
		epoch, id, err := parseOffset(offset)
		if err != nil {
			return nil, err
		}
		if page, err = s.readPage(ctx, key, ekey, position{epoch: epoch, id: id, real: true}, limit); err != nil {
			return nil, err
		}
		switch {
		case page.beyond:
			return nil, fmt.Errorf("%w: %q is after the last message of %s", backplane.ErrInvalidOffset, offset, channel)
		case !page.retained:
			return nil, fmt.Errorf("%w: %s after %s", backplane.ErrNotRetained, channel, offset)
		}
	}
	out := make([]backplane.Entry, len(page.entries))
	for i, e := range page.entries {
		out[i] = backplane.Entry{Offset: offsetOf(page.epoch, e.id), Payload: []byte(e.payload)}
	}
	return out, nil
}

// send publishes payload on rc through the publish script, which appends it
// to the channel's log first.
func (s *Streams) send(ctx context.Context, pre, rc string, payload []byte) error {
	return s.pub.publish(ctx, rc, logKey(pre, rc), epochKey(pre, rc), payload)
}

// shardHooks returns the hooks of a shard: wake-ups, start positions and
// the catch-up after an outage.
func (s *Streams) shardHooks(pre string) shardMode {
	return newShardLog(s, pre)
}

// tick measures the Redis server's clock, against which wake-ups are
// checked.
func (s *Streams) tick(ctx context.Context) {
	s.syncClock(ctx)
}

// appendCmd queues on pipe the publish script for r.
func (s *Streams) appendCmd(ctx context.Context, pipe goredis.Pipeliner, r *pubReq) goredis.Cmder {
	pub := "PUBLISH"
	if s.sharded {
		pub = "SPUBLISH"
	}
	return publishScript.EvalSha(ctx, pipe, []string{r.key, r.ekey},
		r.channel, r.payload, s.maxLen, s.maxAge.Milliseconds(), pub,
		newEpoch(), s.epochTTL.Milliseconds())
}

// loadScript loads the publish script into Redis, through the client that sends
// the publishes.
func (s *Streams) loadScript(ctx context.Context) error {
	return publishScript.Load(ctx, s.busClient).Err()
}

// syncClock measures the Redis server's clock against this process's.
func (s *Streams) syncClock(ctx context.Context) {
	sent := time.Now()
	if t, err := s.client.Time(ctx).Result(); err == nil {
		s.clock.observe(t, sent)
	}
}
