package redis

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"

	"github.com/wshub/wshub/backplane"
)

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
// payload. The payload is a part of msg, not a copy.
func splitWakeUp(msg []byte) (epoch string, id streamID, payload []byte, ok bool) {
	i := bytes.IndexByte(msg, ' ')
	if i < 0 || i != epochLen {
		return "", streamID{}, nil, false
	}
	j := bytes.IndexByte(msg[i+1:], ' ')
	if j < 0 {
		return "", streamID{}, nil, false
	}
	epoch = string(msg[:i])
	if !validEpoch(epoch) {
		return "", streamID{}, nil, false
	}
	id, err := parseID(string(msg[i+1 : i+1+j]))
	if err != nil {
		return "", streamID{}, nil, false
	}
	return epoch, id, msg[i+1+j+1:], true
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
