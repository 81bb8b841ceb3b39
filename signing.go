package wshub

import (
	"time"

	"github.com/wshub/wshub/internal/envelope"
)

// forgedLogEvery is the least time between two logs of forged messages by
// one hub; the others are only counted.
const forgedLogEvery = time.Second

// encode returns e in wire form for channel: signed when the hub has
// SigningKeys.
func (h *Hub) encode(channel string, e *envelope.Envelope) []byte {
	if h.signer != nil {
		return h.signer.Encode(channel, e)
	}
	return e.Encode()
}

// decode parses an envelope that arrived on channel. With SigningKeys it
// first verifies its tag: what does not verify yields an error wrapping
// envelope.ErrForged (see dropForged). Without keys a signed envelope is
// malformed (envelope.ErrMalformed), like any other that does not parse.
func (h *Hub) decode(channel string, b []byte) (envelope.Envelope, error) {
	if h.signer != nil {
		return h.signer.Decode(channel, b)
	}
	return envelope.Decode(b)
}

// dropForged counts a message that failed verification, and logs it
// unless the hub logged one less than forgedLogEvery ago.
func (h *Hub) dropForged(channel string, err error) {
	n := h.stats.forged.Add(1)
	now := time.Now().UnixNano()
	last := h.forgedLogged.Load()
	if now-last < int64(forgedLogEvery) || !h.forgedLogged.CompareAndSwap(last, now) {
		return
	}
	h.log.Warn("wshub: dropped backplane message that failed signature verification (logged at most once a second)",
		"channel", channel, "err", err, "forged_total", n)
}
