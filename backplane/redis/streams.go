package redis

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/wshub/wshub/backplane"
)

// In ModeStreams every channel has a capped stream, its log, and an epoch
// key that names the log's current life. A publish is one script that
// appends to the log, trims it by count and age, renews the expiries and
// publishes a wake-up carrying the epoch, the entry's ID and the payload on
// the channel, so live delivery costs no extra read. Because the script
// runs atomically, the wake-ups of a channel come in log order. A node that
// was cut off reads what it missed from the logs, from the last entry it
// delivered per channel, before it goes live again.
//
// The epoch key holds "<epoch>" or "<epoch> <first>", where first is the
// ID of the first entry of the log's current life. It outlives the log
// (EpochTTL against MaxAge), so that a log that expired and a log that was
// lost can be told apart: a log lost with its epoch key (a restart without
// persistence, FLUSHALL, a failover to a server without the data) comes
// back with a new epoch, and every position in the old one is reported as
// not retained rather than as up to date. Nothing in this depends on
// clocks or on the server's uptime.

// publishScript appends ARGV[2] to the stream KEYS[1], trims it to ARGV[3]
// entries and ARGV[4] milliseconds, keeps the epoch key KEYS[2] (a new
// epoch ARGV[6] if it has none) for ARGV[7] milliseconds, and publishes
// "<epoch> <id> <payload>" on ARGV[1] with the command in ARGV[5] (PUBLISH,
// or SPUBLISH on a cluster).
var publishScript = goredis.NewScript(`
local meta = redis.call('GET', KEYS[2])
local fresh = redis.call('EXISTS', KEYS[1]) == 0
local e = ARGV[6]
if meta then e = string.match(meta, '^(%S+)') end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'd', ARGV[2])
if fresh or not meta then
	redis.call('SET', KEYS[2], e .. ' ' .. id, 'PX', ARGV[7])
else
	redis.call('PEXPIRE', KEYS[2], ARGV[7])
end
local age = tonumber(ARGV[4])
if age > 0 then
	local t = redis.call('TIME')
	local min = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - age
	if min > 0 then
		redis.call('XTRIM', KEYS[1], 'MINID', '~', min)
	end
	redis.call('PEXPIRE', KEYS[1], age)
end
redis.call(ARGV[5], ARGV[1], e .. ' ' .. id .. ' ' .. ARGV[2])
return id
`)

// startScript returns, for a channel about to be subscribed, its epoch key
// (made with the new epoch ARGV[1] if there is none, and kept for ARGV[2]
// milliseconds either way), the ID of its log's last entry, if any, and the
// server's TIME.
var startScript = goredis.NewScript(`
local meta = redis.call('GET', KEYS[2])
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if not meta then
	meta = ARGV[1]
	local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
	if #first > 0 then meta = meta .. ' ' .. first[1][1] end
	redis.call('SET', KEYS[2], meta, 'PX', ARGV[2])
else
	redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
local id = false
if #last > 0 then id = last[1][1] end
local t = redis.call('TIME')
return {meta, id, t[1], t[2]}
`)

// readScript reads up to ARGV[2] entries of the log KEYS[1] from ARGV[1]
// (an XRANGE start) and returns the epoch key KEYS[2] (made with the new
// epoch ARGV[3], kept ARGV[4] milliseconds, for a log that has entries but
// lost its epoch), the entries, and, when there are none, the ID of the
// log's last entry.
var readScript = goredis.NewScript(`
local meta = redis.call('GET', KEYS[2])
local r = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
local last = false
if #r == 0 then
	local l = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
	if #l > 0 then last = l[1][1] end
end
if not meta then
	local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
	if #first > 0 then
		meta = ARGV[3] .. ' ' .. first[1][1]
		redis.call('SET', KEYS[2], meta, 'PX', ARGV[4])
	end
end
return {meta, r, last}
`)

// logKey returns the stream key of a Redis channel of shard prefix pre.
func logKey(pre, redisChannel string) string {
	return pre + "log:" + strings.TrimPrefix(redisChannel, pre)
}

// epochKey returns the epoch key of a Redis channel of shard prefix pre.
func epochKey(pre, redisChannel string) string {
	return pre + "epoch:" + strings.TrimPrefix(redisChannel, pre)
}

// epochLen is the length of the epochs this package makes: hex digits.
const epochLen = 12

// newEpoch returns a random epoch.
func newEpoch() string {
	const hex = "0123456789abcdef"
	var b [epochLen]byte
	x := rand.Uint64()
	for i := range b {
		b[i] = hex[x&0xf]
		x >>= 4
	}
	return string(b[:])
}

// validEpoch reports whether e is an epoch this package makes.
func validEpoch(e string) bool {
	if len(e) != epochLen {
		return false
	}
	for i := 0; i < len(e); i++ {
		if c := e[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// parseMeta splits an epoch key's value into the epoch and the ID of the
// first entry of the log's life (zero and false when it has none).
func parseMeta(v string) (epoch string, first streamID, hasFirst bool) {
	epoch, rest, ok := strings.Cut(v, " ")
	if !validEpoch(epoch) {
		return "", streamID{}, false
	}
	if ok {
		if id, err := parseID(rest); err == nil {
			return epoch, id, true
		}
	}
	return epoch, streamID{}, false
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

// offsetOf is the form of a position that wshub hands out:
// "<epoch>:<ms>-<seq>" with the ID in fixed-width hex, so that offsets of
// one epoch compare in publish order as strings.
func offsetOf(epoch string, id streamID) string {
	const hex = "0123456789abcdef"
	b := make([]byte, len(epoch)+1+33)
	n := copy(b, epoch)
	b[n] = ':'
	h := b[n+1:]
	for i := 0; i < 16; i++ {
		h[15-i] = hex[(id.ms>>(4*i))&0xf]
		h[32-i] = hex[(id.seq>>(4*i))&0xf]
	}
	h[16] = '-'
	return string(b)
}

// parseOffset turns an offset back into its epoch and stream ID. Only the
// exact form handed out is accepted, so that offsets compare as strings.
func parseOffset(s string) (string, streamID, error) {
	epoch, pos := backplane.SplitOffset(s)
	if !validEpoch(epoch) || len(pos) != 33 || pos[16] != '-' {
		return "", streamID{}, fmt.Errorf("%w: %q", backplane.ErrInvalidOffset, s)
	}
	ms, err1 := strconv.ParseUint(pos[:16], 16, 64)
	seq, err2 := strconv.ParseUint(pos[17:], 16, 64)
	id := streamID{ms, seq}
	if err1 != nil || err2 != nil || offsetOf(epoch, id) != s {
		return "", streamID{}, fmt.Errorf("%w: %q", backplane.ErrInvalidOffset, s)
	}
	return epoch, id, nil
}

// splitWakeUp splits a wake-up message into its epoch, entry ID and
// payload.
func splitWakeUp(msg string) (epoch string, id streamID, payload string, ok bool) {
	epoch, rest, ok1 := strings.Cut(msg, " ")
	head, payload, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || !validEpoch(epoch) {
		return "", streamID{}, "", false
	}
	id, err := parseID(head)
	if err != nil {
		return "", streamID{}, "", false
	}
	return epoch, id, payload, true
}

// entry is one message read back from a log.
type entry struct {
	id      streamID
	payload string
}

// position is where a node or client is in a log: the last entry it
// delivered (real), or, for a log that had no entries when the node
// subscribed, the Redis time then (not an entry) and the first entry its
// epoch key named then (hasFirst), if any.
type position struct {
	epoch    string
	id       streamID
	real     bool
	first    streamID
	hasFirst bool
}

// pageResult is one page read from a log.
type pageResult struct {
	entries []entry
	// epoch is the log's epoch now; empty when the log and its epoch are
	// gone.
	epoch string
	// retained is false when entries after the position may have been
	// dropped or lost. The entries are then those left after the
	// position, or, when the log's epoch changed, those of its current
	// life from its start.
	retained bool
	// beyond is set when a real position lies after the log's last entry:
	// it was never handed out.
	beyond bool
}

// readPage reads up to limit entries of a channel's log after from. It
// reports them as retained only when nothing after from can be missing:
// the log is the same life (epoch) as from, and from's entry is still in it
// (a real position), or the log's life started after from and its first
// entry is still in it (a position that is not an entry).
func (b *Backplane) readPage(ctx context.Context, key, ekey string, from position, limit int) (pageResult, error) {
	start := "(" + from.id.String()
	if from.real {
		start = from.id.String() // inclusive: from's entry must be there
	}
	res, err := b.readRange(ctx, key, ekey, start, limit+1)
	if err != nil {
		return pageResult{}, err
	}
	epoch, first, hasFirst := parseMeta(res.meta)
	out := pageResult{epoch: epoch, retained: true}
	msgs := res.entries
	switch {
	case epoch == "" || epoch != from.epoch:
		// Another life of the log, or none: what was after from is gone.
		// Read the current life from its start.
		out.retained = false
		if msgs, err = b.fromStart(ctx, key, ekey, &out, limit); err != nil {
			return pageResult{}, err
		}
	case from.real:
		switch {
		case len(msgs) > 0 && msgs[0].id == from.id:
			msgs = msgs[1:]
		case len(msgs) == 0 && res.hasLast && res.last.less(from.id):
			out.retained, out.beyond = false, true
		default:
			// from's entry was trimmed, or the log was deleted: what
			// is left after it is read, but something may be gone.
			out.retained = false
		}
	case hasFirst && (!from.hasFirst || first != from.first):
		// The log's life began after from: everything of it must still
		// be there.
		out.retained = len(msgs) > 0 && msgs[0].id == first
	}
	if len(msgs) > limit {
		msgs = msgs[:limit]
	}
	out.entries = msgs
	return out, nil
}

// fromStart reads the first page of a log's current life into out.
func (b *Backplane) fromStart(ctx context.Context, key, ekey string, out *pageResult, limit int) ([]entry, error) {
	res, err := b.readRange(ctx, key, ekey, "-", limit)
	if err != nil {
		return nil, err
	}
	out.epoch, _, _ = parseMeta(res.meta)
	return res.entries, nil
}

// rangeResult is what readScript returns, parsed.
type rangeResult struct {
	meta    string
	entries []entry
	last    streamID
	hasLast bool
}

// readRange runs readScript.
func (b *Backplane) readRange(ctx context.Context, key, ekey, start string, count int) (rangeResult, error) {
	v, err := readScript.Run(ctx, b.client, []string{key, ekey}, start, count, newEpoch(), b.opts.EpochTTL.Milliseconds()).Result()
	if err != nil && !errors.Is(err, goredis.Nil) {
		return rangeResult{}, fmt.Errorf("%w: read log: %w", backplane.ErrUnavailable, err)
	}
	parts, _ := v.([]interface{})
	if len(parts) != 3 {
		return rangeResult{}, fmt.Errorf("%w: read log: unexpected reply %T", backplane.ErrUnavailable, v)
	}
	var res rangeResult
	res.meta, _ = parts[0].(string)
	if s, ok := parts[2].(string); ok {
		if id, err := parseID(s); err == nil {
			res.last, res.hasLast = id, true
		}
	}
	rows, _ := parts[1].([]interface{})
	res.entries = make([]entry, 0, len(rows))
	for _, row := range rows {
		e, ok := parseEntry(row)
		if !ok {
			return rangeResult{}, fmt.Errorf("%w: read log: malformed entry", backplane.ErrUnavailable)
		}
		res.entries = append(res.entries, e)
	}
	return res, nil
}

// parseEntry parses one XRANGE row as a script returns it: the ID and the
// field-value list, whose field "d" is the payload.
func parseEntry(row interface{}) (entry, bool) {
	r, ok := row.([]interface{})
	if !ok || len(r) != 2 {
		return entry{}, false
	}
	s, _ := r[0].(string)
	id, err := parseID(s)
	if err != nil {
		return entry{}, false
	}
	fields, _ := r[1].([]interface{})
	for i := 0; i+1 < len(fields); i += 2 {
		if f, _ := fields[i].(string); f == "d" {
			p, _ := fields[i+1].(string)
			return entry{id, p}, true
		}
	}
	return entry{}, false
}

// Read returns up to limit messages of channel published after offset,
// oldest first, with their offsets. It returns an error wrapping
// backplane.ErrNotRetained when messages after offset may already have
// been dropped by retention or lost with the log (offset is of an older
// epoch), and one wrapping backplane.ErrInvalidOffset for an offset this
// backplane did not hand out, including one beyond the log's last entry.
// An empty offset reads from the oldest message retained.
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
	if b.isClosed() {
		return nil, backplane.ErrClosed
	}
	pre, rc := b.names(channel)
	key, ekey := logKey(pre, rc), epochKey(pre, rc)
	var page pageResult
	if offset == "" {
		res, err := b.readRange(ctx, key, ekey, "-", limit)
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
		if page, err = b.readPage(ctx, key, ekey, position{epoch: epoch, id: id, real: true}, limit); err != nil {
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

// catchUpPage is how many entries a node reads per log and round trip when
// it catches up.
const catchUpPage = 512

// catchUp delivers, for every channel the shard holds, what was published
// since the last entry it delivered, in order, and reports whether some
// channel's log no longer had all of it (or was lost and recreated). It
// runs on the receiving goroutine before live delivery resumes, so nothing
// overtakes it; live wake-ups for entries it delivered are dropped as
// duplicates.
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
	s.b.syncClock(ctx)
	for len(todo) > 0 && ctx.Err() == nil {
		for ch, from := range todo {
			page, err := s.b.readPage(ctx, logKey(s.prefix, ch), epochKey(s.prefix, ch), from, catchUpPage)
			if err != nil {
				s.b.log.Warn("redis backplane: catch-up read failed", "channel", ch, "err", err)
				gap = true
				delete(todo, ch)
				continue
			}
			gap = gap || !page.retained
			if page.epoch != from.epoch {
				// Whatever comes next is of the log's current life.
				s.forget(ch)
			}
			for _, e := range page.entries {
				if s.deliverEntry(ch, page.epoch, e.id, e.payload) {
					s.b.stats.caughtUp.Add(1)
				}
			}
			if len(page.entries) < catchUpPage || page.epoch == "" {
				delete(todo, ch)
			} else {
				todo[ch] = position{epoch: page.epoch, id: page.entries[len(page.entries)-1].id, real: true}
			}
			s.mu.Lock()
			if !s.probeSent.IsZero() {
				s.probeSent = time.Now() // busy, not dead
			}
			s.mu.Unlock()
		}
	}
	return gap
}

// forget drops the position of a held channel, so that the next entry of
// any epoch is delivered.
func (s *subscriber) forget(redisChannel string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.want[redisChannel]; ok {
		delete(s.last, redisChannel)
	}
}

// deliverEntry hands an entry of a Redis channel to the handler unless it
// is not newer than the last one delivered of the same epoch, and
// remembers it. It reports whether it delivered.
func (s *subscriber) deliverEntry(redisChannel, epoch string, id streamID, payload string) bool {
	s.mu.Lock()
	last, known := s.last[redisChannel]
	_, want := s.want[redisChannel]
	if !want || (known && last.epoch == epoch && !last.id.less(id)) {
		s.mu.Unlock()
		if want {
			s.b.stats.duplicates.Add(1)
		}
		return false
	}
	s.last[redisChannel] = position{epoch: epoch, id: id, real: true}
	s.mu.Unlock()
	s.b.deliver(s, redisChannel, offsetOf(epoch, id), payload)
	return true
}

// startPositions returns, for channels about to be subscribed, where their
// logs end now and in which epoch, so that a catch-up after an outage
// knows where each one starts even if nothing arrived for it before.
// subscribe records them for the channels it adds.
func (s *subscriber) startPositions(ctx context.Context, names []string) (map[string]position, error) {
	pipe := s.b.client.Pipeline()
	cmds := make([]*goredis.Cmd, len(names))
	ttl := s.b.opts.EpochTTL.Milliseconds()
	for i, ch := range names {
		cmds[i] = startScript.EvalSha(ctx, pipe, []string{logKey(s.prefix, ch), epochKey(s.prefix, ch)}, newEpoch(), ttl)
	}
	sent := time.Now()
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
		if !goredis.HasErrorPrefix(err, "NOSCRIPT") {
			return nil, fmt.Errorf("%w: %w", backplane.ErrUnavailable, err)
		}
		if err := startScript.Load(ctx, s.b.client).Err(); err != nil {
			return nil, fmt.Errorf("%w: %w", backplane.ErrUnavailable, err)
		}
		return s.startPositions(ctx, names)
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
			s.b.clock.observe(now, sent)
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
