package redis

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/wshub/wshub/backplane"
)

// In ModeStreams every channel has a capped stream, its log. A publish is
// one script that appends to the log, trims it by count and age, renews its
// expiry and publishes a wake-up carrying the entry's ID and payload on the
// channel, so live delivery costs no extra read. Because the script runs
// atomically, the wake-ups of a channel come in log order. A node that was
// cut off reads what it missed from the logs, from the last ID it
// delivered per channel, before it goes live again.

// publishScript appends ARGV[2] to the stream KEYS[1], trims it to ARGV[3]
// entries and ARGV[4] milliseconds, and publishes "<id> <payload>" on
// ARGV[1] with the command in ARGV[5] (PUBLISH, or SPUBLISH on a cluster).
var publishScript = goredis.NewScript(`
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'd', ARGV[2])
local age = tonumber(ARGV[4])
if age > 0 then
	local t = redis.call('TIME')
	local min = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - age
	if min > 0 then
		redis.call('XTRIM', KEYS[1], 'MINID', '~', min)
	end
	redis.call('PEXPIRE', KEYS[1], age)
end
redis.call(ARGV[5], ARGV[1], id .. ' ' .. ARGV[2])
return id
`)

// logKey returns the stream key of a Redis channel of shard prefix pre.
func logKey(pre, redisChannel string) string {
	return pre + "log:" + strings.TrimPrefix(redisChannel, pre)
}

// streamID is a Redis stream entry ID.
type streamID struct{ ms, seq uint64 }

func parseID(s string) (streamID, error) {
	ms, seq, ok := strings.Cut(s, "-")
	if !ok {
		return streamID{}, fmt.Errorf("stream id %q", s)
	}
	a, err1 := strconv.ParseUint(ms, 10, 64)
	b, err2 := strconv.ParseUint(seq, 10, 64)
	if err1 != nil || err2 != nil {
		return streamID{}, fmt.Errorf("stream id %q", s)
	}
	return streamID{a, b}, nil
}

func (id streamID) String() string {
	return strconv.FormatUint(id.ms, 10) + "-" + strconv.FormatUint(id.seq, 10)
}

func (id streamID) less(o streamID) bool {
	return id.ms < o.ms || (id.ms == o.ms && id.seq < o.seq)
}

// Offset is the form of a stream ID that wshub hands out: fixed-width hex,
// so that offsets of a channel compare in publish order as strings.
func (id streamID) Offset() string {
	const hex = "0123456789abcdef"
	var b [33]byte
	for i := 0; i < 16; i++ {
		b[15-i] = hex[(id.ms>>(4*i))&0xf]
		b[32-i] = hex[(id.seq>>(4*i))&0xf]
	}
	b[16] = '-'
	return string(b[:])
}

// ParseOffset turns an offset back into a stream ID.
func parseOffset(s string) (streamID, error) {
	if len(s) != 33 || s[16] != '-' {
		return streamID{}, fmt.Errorf("%w: %q", backplane.ErrInvalidOffset, s)
	}
	ms, err1 := strconv.ParseUint(s[:16], 16, 64)
	seq, err2 := strconv.ParseUint(s[17:], 16, 64)
	id := streamID{ms, seq}
	if err1 != nil || err2 != nil || id.Offset() != s {
		// Only the form handed out, so that offsets compare as strings.
		return streamID{}, fmt.Errorf("%w: %q", backplane.ErrInvalidOffset, s)
	}
	return id, nil
}

// splitWakeUp splits a wake-up message into its entry ID and payload.
func splitWakeUp(msg string) (streamID, string, bool) {
	head, payload, ok := strings.Cut(msg, " ")
	if !ok {
		return streamID{}, "", false
	}
	id, err := parseID(head)
	if err != nil {
		return streamID{}, "", false
	}
	return id, payload, true
}

// entry is one message read back from a log.
type entry struct {
	id      streamID
	payload string
}

// position is where a node or client is in a log: the last entry it
// delivered (real), or, for a log that did not exist when the node
// subscribed, the Redis time then (not an entry).
type position struct {
	id   streamID
	real bool
}

// readPage reads up to limit entries of key after from. It reports
// retained=false when entries after a real position may have been trimmed:
// its entry is gone while later ones exist, or the whole log expired
// (which happens MaxAge after its last publish) although the position is
// younger than that. After a position that is not an entry, everything
// still in the log is read and counted as retained.
func (b *Backplane) readPage(ctx context.Context, key string, from position, limit int) (entries []entry, retained bool, err error) {
	pipe := b.client.Pipeline()
	start := "(" + from.id.String()
	if from.real {
		start = from.id.String()
	}
	rng := pipe.XRangeN(ctx, key, start, "+", int64(limit)+1)
	now := pipe.Time(ctx)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
		return nil, false, fmt.Errorf("%w: read log: %w", backplane.ErrUnavailable, err)
	}
	msgs := rng.Val()
	retained = true
	if from.real {
		switch {
		case len(msgs) == 0:
			// The log is gone. It expires MaxAge after its last message,
			// so nothing after a younger position can have expired; but a
			// Redis that restarted since, without persistence, lost it.
			age := now.Val().UnixMilli() - int64(from.id.ms)
			retained = age < b.opts.MaxAge.Milliseconds() && !b.restartedSince(ctx, from.id.ms, now.Val())
		case msgs[0].ID == from.id.String():
			msgs = msgs[1:]
		default:
			retained = false
		}
	}
	if len(msgs) > limit {
		msgs = msgs[:limit]
	}
	for _, m := range msgs {
		id, err := parseID(m.ID)
		if err != nil {
			return nil, false, err
		}
		d, _ := m.Values["d"].(string)
		entries = append(entries, entry{id, d})
	}
	return entries, retained, nil
}

// restartedSince reports whether the Redis server started after the time
// ms (its own clock, in milliseconds), or cannot tell.
func (b *Backplane) restartedSince(ctx context.Context, ms uint64, now time.Time) bool {
	info, err := b.client.Info(ctx, "server").Result()
	if err != nil {
		return true
	}
	const key = "uptime_in_seconds:"
	i := strings.Index(info, key)
	if i < 0 {
		return true
	}
	rest := info[i+len(key):]
	if j := strings.IndexAny(rest, "\r\n"); j >= 0 {
		rest = rest[:j]
	}
	up, err := strconv.ParseInt(rest, 10, 64)
	if err != nil {
		return true
	}
	started := now.UnixMilli() - (up+1)*1000 // uptime is in whole seconds
	return int64(ms) >= started
}

// Read returns up to limit messages of channel published after offset,
// oldest first, with their offsets. It returns an error wrapping
// backplane.ErrNotRetained when messages after offset may already have
// been dropped by retention, and one wrapping backplane.ErrInvalidOffset
// for an offset this backplane did not hand out. An empty offset reads from
// the oldest message retained.
func (b *Backplane) Read(ctx context.Context, channel, offset string, limit int) ([]backplane.Entry, error) {
	if channel == "" {
		return nil, backplane.ErrInvalidChannel
	}
	if b.opts.Mode != ModeStreams {
		return nil, fmt.Errorf("%w: Read needs mode=streams", backplane.ErrNotRetained)
	}
	if limit <= 0 {
		return nil, errors.New("redis backplane: Read limit must be positive")
	}
	var from position
	if offset != "" {
		id, err := parseOffset(offset)
		if err != nil {
			return nil, err
		}
		from = position{id, true}
	}
	if b.isClosed() {
		return nil, backplane.ErrClosed
	}
	_, key := b.redisNames(channel)
	entries, retained, err := b.readPage(ctx, key, from, limit)
	if err != nil {
		return nil, err
	}
	if !retained {
		return nil, fmt.Errorf("%w: %s after %s", backplane.ErrNotRetained, channel, offset)
	}
	out := make([]backplane.Entry, len(entries))
	for i, e := range entries {
		out[i] = backplane.Entry{Offset: e.id.Offset(), Payload: []byte(e.payload)}
	}
	return out, nil
}

// catchUpPage is how many entries a node reads per log and round trip when
// it catches up.
const catchUpPage = 512

// catchUp delivers, for every channel the shard holds, what was published
// since the last entry it delivered, in order, and reports whether some
// channel's log no longer had all of it. It runs on the receiving goroutine
// before live delivery resumes, so nothing overtakes it; live wake-ups for
// entries it delivered are dropped as duplicates.
func (s *subscriber) catchUp() (gap bool) {
	s.mu.Lock()
	todo := make(map[string]position, len(s.last))
	for ch, pos := range s.last {
		if _, ok := s.want[ch]; ok {
			todo[ch] = pos
		}
	}
	s.mu.Unlock()
	ctx := s.b.ctx
	for len(todo) > 0 && ctx.Err() == nil {
		for ch, from := range todo {
			entries, retained, err := s.b.readPage(ctx, logKey(s.prefix, ch), from, catchUpPage)
			if err != nil {
				s.b.log.Warn("redis backplane: catch-up read failed", "channel", ch, "err", err)
				gap = true
				delete(todo, ch)
				continue
			}
			gap = gap || !retained
			for _, e := range entries {
				if s.deliverEntry(ch, e.id, e.payload) {
					s.b.stats.caughtUp.Add(1)
				}
			}
			if len(entries) < catchUpPage {
				delete(todo, ch)
			} else {
				todo[ch] = position{entries[len(entries)-1].id, true}
			}
			s.mu.Lock()
			s.probeSent = time.Time{} // busy, not dead
			s.mu.Unlock()
		}
	}
	return gap
}

// deliverEntry hands an entry of a Redis channel to the handler unless it
// is not newer than the last one delivered, and remembers it. It reports
// whether it delivered.
func (s *subscriber) deliverEntry(redisChannel string, id streamID, payload string) bool {
	s.mu.Lock()
	last, known := s.last[redisChannel]
	_, want := s.want[redisChannel]
	if !want || (known && !last.id.less(id)) {
		s.mu.Unlock()
		if want {
			s.b.stats.duplicates.Add(1)
		}
		return false
	}
	s.last[redisChannel] = position{id, true}
	s.mu.Unlock()
	s.b.deliverAt(s, redisChannel, id.Offset(), payload)
	return true
}

// startPositions returns, for channels about to be subscribed, where their
// logs end now, so that a catch-up after an outage knows where each one
// starts even if nothing arrived for it before. subscribe records them for
// the channels it adds.
func (s *subscriber) startPositions(ctx context.Context, names []string) (map[string]position, error) {
	pipe := s.b.client.Pipeline()
	cmds := make([]*goredis.XMessageSliceCmd, len(names))
	for i, ch := range names {
		cmds[i] = pipe.XRevRangeN(ctx, logKey(s.prefix, ch), "+", "-", 1)
	}
	now := pipe.Time(ctx)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
		return nil, fmt.Errorf("%w: %w", backplane.ErrUnavailable, err)
	}
	starts := make(map[string]position, len(names))
	for i, ch := range names {
		// Any entry added from now on sorts after this position.
		pos := position{id: streamID{ms: uint64(now.Val().UnixMilli()) - 1, seq: ^uint64(0)}}
		if msgs := cmds[i].Val(); len(msgs) > 0 {
			if id, err := parseID(msgs[0].ID); err == nil {
				pos = position{id, true}
			}
		}
		starts[ch] = pos
	}
	return starts, nil
}
