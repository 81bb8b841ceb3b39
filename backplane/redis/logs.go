package redis

import (
	"context"
	"errors"
	"fmt"

	goredis "github.com/redis/go-redis/v9"

	"github.com/wshub/wshub/backplane"
)

// In a Streams every channel has a capped stream, its log, and an epoch
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
//
// This file holds the scripts and the reads of the logs; offsets.go the
// forms of epochs, IDs, offsets and wake-ups; catchup.go what a Streams
// subscriber does with them.

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
func (s *Streams) readPage(ctx context.Context, key, ekey string, from position, limit int) (pageResult, error) {
	start := "(" + from.id.String()
	if from.real {
		start = from.id.String() // inclusive: from's entry must be there
	}
	res, err := s.readRange(ctx, key, ekey, start, limit+1)
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
		if msgs, err = s.fromStart(ctx, key, ekey, &out, limit); err != nil {
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
func (s *Streams) fromStart(ctx context.Context, key, ekey string, out *pageResult, limit int) ([]entry, error) {
	res, err := s.readRange(ctx, key, ekey, "-", limit)
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
func (s *Streams) readRange(ctx context.Context, key, ekey, start string, count int) (rangeResult, error) {
	v, err := readScript.Run(ctx, s.client, []string{key, ekey}, start, count, newEpoch(), s.epochTTL.Milliseconds()).Result()
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
