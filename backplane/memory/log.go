package memory

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/wshub/wshub/backplane"
)

// Suggested bounds of the channel logs, the defaults of the Redis Streams
// backend's MaxLen and MaxAge: Bus.SetLogLimit(DefaultLogMessages,
// DefaultLogAge) makes a bus keep what a Streams cluster keeps by default.
const (
	// DefaultLogMessages is a number of messages per channel to keep.
	DefaultLogMessages = 1000
	// DefaultLogAge is an age after which to drop messages.
	DefaultLogAge = 5 * time.Minute
)

// offsetHex is the number of hexadecimal digits of an epoch and of a
// position; an offset is "<epoch>:<position>".
const offsetHex = 16

// chanLog is the log of one channel: the messages published to it that
// retention has not dropped yet, with consecutive positions.
//
// A log is dropped (and marked dead) when all its messages are older than
// the age bound, by Bus.DropLog and DropLogs, and when the logs are turned
// off; the channel's next message starts a new log with a new epoch.
type chanLog struct {
	// mu guards the fields up to dead. A publish holds it from the moment
	// it appends a message until it handed the message to every
	// subscriber, so that offsets grow in the order every node receives
	// the messages.
	mu sync.Mutex
	// entries[head:] are the retained messages, the last one at position
	// last; entries[:head] were trimmed and are zero.
	entries []logEntry
	head    int
	last    uint64
	// dead is set when the log was dropped: a publisher that holds it must
	// look the channel's log up again.
	dead bool

	channel string
	epoch   string

	// Guarded by Bus.logMu: touched is the Bus.now time of the latest
	// publish to the log, never before that of any of its entries; older
	// and newer link the bus's logs from the least to the most recently
	// published to.
	touched      int64
	older, newer *chanLog
}

// logEntry is one retained message and its publish time in Bus.now time.
type logEntry struct {
	at      int64
	payload []byte
}

// retainedLocked returns the number of retained messages. l.mu must be
// held.
func (l *chanLog) retainedLocked() int { return len(l.entries) - l.head }

// firstLocked returns the position of the oldest retained message, last+1
// when there is none. l.mu must be held.
func (l *chanLog) firstLocked() uint64 { return l.last - uint64(l.retainedLocked()) + 1 }

// offset returns the offset of the message at position pos.
func (l *chanLog) offset(pos uint64) string {
	b := make([]byte, 0, 2*offsetHex+1)
	b = append(b, l.epoch...)
	b = append(b, ':')
	return string(appendHex(b, pos))
}

// appendLocked adds a message published at now, trims the log to its
// bounds and returns the message's offset. l.mu must be held.
func (l *chanLog) appendLocked(payload []byte, now int64, maxMsgs int, maxAge time.Duration) string {
	if k := len(l.entries); k > l.head && l.entries[k-1].at > now {
		now = l.entries[k-1].at // publishes that looked the log up in another order
	}
	l.entries = append(l.entries, logEntry{at: now, payload: payload})
	l.last++
	l.trimLocked(now, maxMsgs, maxAge)
	return l.offset(l.last)
}

// trimLocked drops the oldest messages beyond maxMsgs and those older than
// maxAge at now (0: no age bound). l.mu must be held.
func (l *chanLog) trimLocked(now int64, maxMsgs int, maxAge time.Duration) {
	drop := max(0, l.retainedLocked()-maxMsgs)
	if maxAge > 0 {
		for l.head+drop < len(l.entries) && now-l.entries[l.head+drop].at > int64(maxAge) {
			drop++
		}
	}
	if drop == 0 {
		return
	}
	clear(l.entries[l.head : l.head+drop]) // let the payloads go
	l.head += drop
	if l.head >= l.retainedLocked() {
		// Move the retained messages down, so that the buffer stays within
		// twice the bound; give a buffer much larger than that back.
		kept := l.entries[l.head:]
		if cap(l.entries) > 4*max(maxMsgs, 16) {
			l.entries = append(make([]logEntry, 0, len(kept)*2), kept...)
		} else {
			n := copy(l.entries, kept)
			clear(l.entries[n:])
			l.entries = l.entries[:n]
		}
		l.head = 0
	}
}

// readLocked returns up to limit retained messages after position pos (0:
// from the oldest). l.mu must be held.
func (l *chanLog) readLocked(pos uint64, limit int) []backplane.Entry {
	from := l.firstLocked()
	if pos >= from {
		from = pos + 1
	}
	if from > l.last {
		return nil
	}
	k := min(uint64(limit), l.last-from+1)
	i := l.head + int(from-l.firstLocked())
	out := make([]backplane.Entry, k)
	for j := range out {
		out[j] = backplane.Entry{Offset: l.offset(from + uint64(j)), Payload: l.entries[i+j].payload}
	}
	return out
}

// SetLogLimit makes the bus keep a log of every channel, so that its nodes
// implement backplane.Log for real: every message they deliver carries its
// offset (backplane.Message.Offset) and Node.Read reads a channel's log
// back. Each channel's log keeps its newest messages, at most messages of
// them and none older than age; messages must be positive, and age
// positive, or 0 for no age bound (retention then depends on the count
// alone, which suits tests that must not depend on time).
// DefaultLogMessages and DefaultLogAge are the defaults of the Redis
// Streams backend.
//
// Logs are off by default. SetLogLimit(0, 0) turns them off again and drops
// every log. Lowering the bounds trims every log at once. Messages
// published while the logs are off have no offset and are not in any log.
//
// A log costs about 200 bytes per channel plus, per retained message, up
// to 64 bytes and the payload, which the log keeps (it is not copied) until
// retention drops it. Logs whose messages are all older than age are freed
// as later messages are published on the bus.
func (b *Bus) SetLogLimit(messages int, age time.Duration) error {
	if messages < 0 || age < 0 || (messages == 0 && age != 0) {
		return fmt.Errorf("memory: log limit of %d messages and %v: messages must be positive, and age positive or 0 (SetLogLimit(0, 0) turns the logs off)", messages, age)
	}
	b.logMu.Lock()
	defer b.logMu.Unlock()
	b.logMsgs, b.logAge = messages, age
	b.logOn.Store(messages > 0)
	if messages == 0 {
		b.dropLogsLocked()
		return nil
	}
	now := b.now()
	for l := b.oldest; l != nil; l = l.newer {
		l.mu.Lock()
		l.trimLocked(now, messages, age)
		l.mu.Unlock()
	}
	return nil
}

// DropLog drops the log of channel, as if it were lost: a Read after an
// offset of it returns an error wrapping backplane.ErrNotRetained, so that
// a resuming client is told "!not-recovered", and the channel's next
// message starts a new log with a new epoch. Messages already queued for
// nodes are still delivered, with their old offsets. Dropping the log of a
// channel that has none does nothing.
func (b *Bus) DropLog(channel string) error {
	if channel == "" {
		return errEmptyChannel()
	}
	b.logMu.Lock()
	defer b.logMu.Unlock()
	if l := b.logs[channel]; l != nil {
		b.dropLocked(l)
	}
	return nil
}

// DropLogs drops the log of every channel, as a Redis server restarted
// without persistence loses its streams (see DropLog).
func (b *Bus) DropLogs() {
	b.logMu.Lock()
	defer b.logMu.Unlock()
	b.dropLogsLocked()
}

// dropLogsLocked drops every log. b.logMu must be held.
func (b *Bus) dropLogsLocked() {
	for b.oldest != nil {
		b.dropLocked(b.oldest)
	}
}

// dropLocked removes l from the bus and marks it dead. b.logMu must be
// held.
func (b *Bus) dropLocked(l *chanLog) {
	l.mu.Lock()
	l.dead = true
	l.entries, l.head = nil, 0
	l.mu.Unlock()
	delete(b.logs, l.channel)
	b.unlinkLocked(l)
}

// unlinkLocked takes l out of the list of logs. b.logMu must be held.
func (b *Bus) unlinkLocked(l *chanLog) {
	if l.older != nil {
		l.older.newer = l.newer
	} else {
		b.oldest = l.newer
	}
	if l.newer != nil {
		l.newer.older = l.older
	} else {
		b.newest = l.older
	}
	l.older, l.newer = nil, nil
}

// expiredLocked reports whether every message of l is older than the age
// bound at now. b.logMu must be held.
func (b *Bus) expiredLocked(l *chanLog, now int64) bool {
	return b.logAge > 0 && now-l.touched > int64(b.logAge)
}

// newEpochLocked returns an epoch that no other log of this bus had: a
// random tag of the bus and a count of its epochs, so that an offset of
// another bus (one a test made before) is of another epoch too. b.logMu
// must be held.
func (b *Bus) newEpochLocked() string {
	for b.epochTag == 0 {
		b.epochTag = rand.Uint32()
	}
	b.epochs++
	return string(appendHex(nil, uint64(b.epochTag)<<32|uint64(b.epochs)))
}

// logForPublish returns the log of channel, made if need be, locked, with
// the time and the limits to append with, or nil when the logs are off. It drops the
// logs that have expired, from the least recently published to, so that
// idle channels cost nothing.
func (b *Bus) logForPublish(channel string) (l *chanLog, now int64, maxMsgs int, maxAge time.Duration) {
	for {
		b.logMu.Lock()
		if b.logMsgs == 0 {
			b.logMu.Unlock()
			return nil, 0, 0, 0
		}
		now = b.now()
		for b.oldest != nil && b.expiredLocked(b.oldest, now) {
			b.dropLocked(b.oldest)
		}
		l = b.logs[channel]
		if l == nil {
			if b.logs == nil {
				b.logs = make(map[string]*chanLog)
			}
			l = &chanLog{channel: channel, epoch: b.newEpochLocked()}
			b.logs[channel] = l
		} else {
			b.unlinkLocked(l)
		}
		// Move l to the newest end.
		l.touched = max(l.touched, now)
		l.older = b.newest
		if b.newest != nil {
			b.newest.newer = l
		} else {
			b.oldest = l
		}
		b.newest = l
		maxMsgs, maxAge = b.logMsgs, b.logAge
		b.logMu.Unlock()

		l.mu.Lock()
		if !l.dead {
			return l, now, maxMsgs, maxAge
		}
		l.mu.Unlock() // dropped meanwhile: its successor has a new epoch
	}
}

// read implements Node.Read for n.
func (b *Bus) read(ctx context.Context, n *Node, channel, offset string, limit int) ([]backplane.Entry, error) {
	switch {
	case channel == "":
		return nil, errEmptyChannel()
	case limit <= 0:
		return nil, fmt.Errorf("memory: node %q: Read limit %d must be positive", n.name, limit)
	}
	if err := n.Health(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var (
		epoch string
		pos   uint64
	)
	if offset != "" {
		var ok bool
		if epoch, pos, ok = parseOffset(offset); !ok {
			return nil, fmt.Errorf("memory: node %q: %w: %q", n.name, backplane.ErrInvalidOffset, offset)
		}
	}
	for {
		b.logMu.Lock()
		if b.logMsgs == 0 {
			b.logMu.Unlock()
			return nil, fmt.Errorf("memory: node %q: the bus keeps no logs (see Bus.SetLogLimit): %w", n.name, backplane.ErrNotRetained)
		}
		now := b.now()
		l := b.logs[channel]
		if l != nil && b.expiredLocked(l, now) {
			b.dropLocked(l)
			l = nil
		}
		maxMsgs, maxAge := b.logMsgs, b.logAge
		b.logMu.Unlock()

		if l == nil {
			if offset == "" {
				return nil, nil
			}
			return nil, fmt.Errorf("memory: node %q: %s after %s: log lost or expired: %w", n.name, channel, offset, backplane.ErrNotRetained)
		}
		l.mu.Lock()
		if l.dead {
			l.mu.Unlock()
			continue
		}
		l.trimLocked(now, maxMsgs, maxAge)
		var err error
		switch {
		case offset == "":
		case epoch != l.epoch:
			err = fmt.Errorf("memory: node %q: %s after %s: another epoch: %w", n.name, channel, offset, backplane.ErrNotRetained)
		case pos > l.last:
			err = fmt.Errorf("memory: node %q: %w: %q is after the last message of %s", n.name, backplane.ErrInvalidOffset, offset, channel)
		case pos < l.firstLocked():
			// As on Redis Streams, the offset's own message must still be
			// there.
			err = fmt.Errorf("memory: node %q: %s after %s: dropped by retention: %w", n.name, channel, offset, backplane.ErrNotRetained)
		}
		var out []backplane.Entry
		if err == nil {
			out = l.readLocked(pos, limit)
		}
		l.mu.Unlock()
		return out, err
	}
}

// parseOffset splits an offset this package makes into its epoch and its
// position.
func parseOffset(s string) (epoch string, pos uint64, ok bool) {
	epoch, p := backplane.SplitOffset(s)
	if _, ok := parseHex(epoch); !ok {
		return "", 0, false
	}
	pos, ok = parseHex(p)
	return epoch, pos, ok
}

// appendHex appends v as offsetHex lowercase hexadecimal digits.
func appendHex(b []byte, v uint64) []byte {
	const digits = "0123456789abcdef"
	for shift := 4 * (offsetHex - 1); shift >= 0; shift -= 4 {
		b = append(b, digits[v>>uint(shift)&0xf])
	}
	return b
}

// parseHex parses what appendHex appends, and nothing else.
func parseHex(s string) (uint64, bool) {
	if len(s) != offsetHex {
		return 0, false
	}
	var v uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case '0' <= c && c <= '9':
			v = v<<4 | uint64(c-'0')
		case 'a' <= c && c <= 'f':
			v = v<<4 | uint64(c-'a'+10)
		default:
			return 0, false
		}
	}
	return v, true
}
