package redis

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/wshub/wshub/backplane"
)

// catchUpPage is how many entries a node reads per log and round trip when
// it catches up.
const catchUpPage = 512

// shardLog is what a Streams subscriber does for its shard: it knows where
// the node is in the log of every channel of the shard it holds, delivers
// wake-ups that are newer, and catches up from the logs after an outage.
type shardLog struct {
	s      *Streams
	prefix string // the shard's

	mu sync.Mutex
	// held are the Redis channels the subscriber holds, kept by hold and
	// drop under the subscriber's lock.
	held map[string]struct{}
	// last is the position of each held channel in its log: the last
	// entry delivered, or where the log ended on Subscribe.
	last map[string]position
}

func newShardLog(s *Streams, prefix string) *shardLog {
	return &shardLog{s: s, prefix: prefix, held: make(map[string]struct{}), last: make(map[string]position)}
}

// prepare reads where the logs of names end, for hold to record.
func (l *shardLog) prepare(ctx context.Context, names []string) (func(string), error) {
	starts, err := l.startPositions(ctx, names)
	if err != nil {
		return nil, err
	}
	return func(name string) {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.held[name] = struct{}{}
		if pos, ok := starts[name]; ok {
			l.last[name] = pos
		}
	}, nil
}

// drop forgets a channel the subscriber no longer holds.
func (l *shardLog) drop(name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.held, name)
	delete(l.last, name)
}

// message delivers a wake-up, unless it is not one or is not newer than
// what was delivered.
func (l *shardLog) message(name string, wake []byte, catchingUp bool) {
	if catchingUp {
		// A wake-up that comes before a reconnected generation has
		// caught up is dropped: the catch-up, which reads the logs
		// after it, delivers its entry in order with what came before.
		return
	}
	epoch, id, payload, ok := splitWakeUp(wake)
	if !ok || l.s.clock.ahead(id.ms) {
		// Not a wake-up, or one with an ID Redis cannot have made yet:
		// published by someone else. Installed as the channel's position,
		// a forged ID from the future would make every real message after
		// it look like a duplicate.
		l.s.logStats.malformed.Add(1)
		l.s.log.Debug("redis backplane: dropped a message that is not a wake-up", "channel", strings.TrimPrefix(name, l.prefix))
		return
	}
	l.deliverEntry(name, epoch, id, payload)
}

// up catches up, when messages may have been missed, before anything live
// is delivered.
func (l *shardLog) up(gap bool, busy func()) bool {
	if !gap {
		return false
	}
	return l.catchUp(busy)
}

// catchUp delivers, for every channel the shard holds, what was published
// since the last entry it delivered, in order, and reports whether some
// channel's log no longer had all of it (or was lost and recreated). It
// runs on the receiving goroutine before live delivery resumes, so nothing
// overtakes it; live wake-ups for entries it delivered are dropped as
// duplicates. It calls busy after each page.
func (l *shardLog) catchUp(busy func()) (gap bool) {
	l.mu.Lock()
	todo := make(map[string]position, len(l.last))
	for ch, pos := range l.last {
		if _, ok := l.held[ch]; ok {
			todo[ch] = pos
		}
	}
	l.mu.Unlock()
	ctx := l.s.ctx
	l.s.syncClock(ctx)
	// Reads that fail (Redis went away again) are logged once per
	// catch-up, not once per channel: a node may hold 100,000.
	failed, firstFailed, firstErr := 0, "", error(nil)
	defer func() {
		if failed > 0 && ctx.Err() == nil {
			l.s.log.Warn("redis backplane: catch-up read failed; reporting a gap",
				"channels", failed, "channel", strings.TrimPrefix(firstFailed, l.prefix), "err", firstErr)
		}
	}()
	for len(todo) > 0 && ctx.Err() == nil {
		for ch, from := range todo {
			page, err := l.s.readPage(ctx, logKey(l.prefix, ch), epochKey(l.prefix, ch), from, catchUpPage)
			if err != nil {
				if failed == 0 {
					firstFailed, firstErr = ch, err
				}
				failed++
				gap = true
				delete(todo, ch)
				continue
			}
			gap = gap || !page.retained
			if page.epoch != from.epoch {
				// Whatever comes next is of the log's current life.
				l.forget(ch)
			}
			for _, e := range page.entries {
				if l.deliverEntry(ch, page.epoch, e.id, []byte(e.payload)) {
					l.s.logStats.caughtUp.Add(1)
				}
			}
			if len(page.entries) < catchUpPage || page.epoch == "" {
				delete(todo, ch)
			} else {
				todo[ch] = position{epoch: page.epoch, id: page.entries[len(page.entries)-1].id, real: true}
			}
			busy()
		}
	}
	return gap
}

// forget drops the position of a held channel, so that the next entry of
// any epoch is delivered.
func (l *shardLog) forget(redisChannel string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.held[redisChannel]; ok {
		delete(l.last, redisChannel)
	}
}

// deliverEntry hands an entry of a Redis channel to the handler unless it
// is not newer than the last one delivered of the same epoch, and
// remembers it. It reports whether it delivered.
func (l *shardLog) deliverEntry(redisChannel, epoch string, id streamID, payload []byte) bool {
	l.mu.Lock()
	last, known := l.last[redisChannel]
	_, held := l.held[redisChannel]
	if !held || (known && last.epoch == epoch && !last.id.less(id)) {
		l.mu.Unlock()
		if held {
			l.s.logStats.duplicates.Add(1)
		}
		return false
	}
	l.last[redisChannel] = position{epoch: epoch, id: id, real: true}
	l.mu.Unlock()
	l.s.deliver(l.prefix, redisChannel, offsetOf(epoch, id), payload)
	return true
}

// startPositions returns, for channels about to be subscribed, where their
// logs end now and in which epoch, so that a catch-up after an outage
// knows where each one starts even if nothing arrived for it before.
// hold records them for the channels Subscribe adds.
func (l *shardLog) startPositions(ctx context.Context, names []string) (map[string]position, error) {
	pipe := l.s.client.Pipeline()
	cmds := make([]*goredis.Cmd, len(names))
	ttl := l.s.epochTTL.Milliseconds()
	for i, ch := range names {
		cmds[i] = startScript.EvalSha(ctx, pipe, []string{logKey(l.prefix, ch), epochKey(l.prefix, ch)}, newEpoch(), ttl)
	}
	sent := time.Now()
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
		if !goredis.HasErrorPrefix(err, "NOSCRIPT") {
			return nil, fmt.Errorf("%w: %w", backplane.ErrUnavailable, err)
		}
		if err := startScript.Load(ctx, l.s.client).Err(); err != nil {
			return nil, fmt.Errorf("%w: %w", backplane.ErrUnavailable, err)
		}
		return l.startPositions(ctx, names)
	}
	starts := make(map[string]position, len(names))
	for i, ch := range names {
		v, _ := cmds[i].Val().([]interface{})
		if len(v) != 4 {
			return nil, fmt.Errorf("%w: start positions: unexpected reply", backplane.ErrUnavailable)
		}
		meta, _ := v[0].(string)
		epoch, first, hasFirst := parseMeta(meta)
		now, ok := scriptTime(v[2], v[3])
		if !ok {
			return nil, fmt.Errorf("%w: start positions: unexpected reply", backplane.ErrUnavailable)
		}
		if i == 0 {
			l.s.clock.observe(now, sent)
		}
		// Any entry added from now on sorts after this position.
		pos := position{epoch: epoch, id: streamID{ms: uint64(now.UnixMilli()) - 1, seq: ^uint64(0)}, first: first, hasFirst: hasFirst}
		if last, ok := v[1].(string); ok {
			if id, err := parseID(last); err == nil {
				pos = position{epoch: epoch, id: id, real: true}
			}
		}
		starts[ch] = pos
	}
	return starts, nil
}

// scriptTime parses the seconds and microseconds of a TIME reply that a
// script returned.
func scriptTime(sec, usec interface{}) (time.Time, bool) {
	ss, _ := sec.(string)
	us, _ := usec.(string)
	a, err1 := strconv.ParseInt(ss, 10, 64)
	b, err2 := strconv.ParseInt(us, 10, 64)
	if err1 != nil || err2 != nil {
		return time.Time{}, false
	}
	return time.Unix(a, b*1000), true
}
