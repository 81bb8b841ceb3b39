package envelope

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"sync"
)

// TagSize is the length of the tag that ends a signed envelope.
const TagSize = sha256.Size

// ErrForged is returned by Signer.Decode for bytes that do not carry a
// valid tag by one of its keys: unsigned, truncated, tampered with, signed
// with another key or for another channel.
var ErrForged = errors.New("envelope: missing or invalid signature")

// macContext starts what a tag covers, so that a key shared with something
// else never signs an envelope by accident.
const macContext = "wshub envelope\x00"

// Signer signs envelopes and verifies them with a list of shared keys.
//
// The tag is HMAC-SHA256, keyed with the first key when signing, over the
// context string "wshub envelope\x00", the uvarint length of the channel
// the envelope is published on, the channel, and every byte of the envelope
// before the tag. Binding
// the channel means a signed envelope moved to another channel (another
// user's, say) fails verification. Nothing binds it to a time: the same
// bytes published again on the same channel verify again.
//
// A Signer is safe for concurrent use and must not be copied.
type Signer struct {
	keys [][]byte
	// macs holds *macState values: one keyed HMAC per key, reset
	// between uses, so that signing and verifying do not allocate.
	macs sync.Pool
}

// macState is one goroutine's HMACs and scratch space.
type macState struct {
	macs []hash.Hash
	head []byte // macContext, channel length and channel
	sum  [TagSize]byte
}

// NewSigner returns a signer that signs with keys[0] and accepts a tag by
// any of keys. It copies the keys. It returns nil when keys is empty.
func NewSigner(keys [][]byte) *Signer {
	if len(keys) == 0 {
		return nil
	}
	s := &Signer{keys: make([][]byte, len(keys))}
	for i, k := range keys {
		s.keys[i] = bytes.Clone(k)
	}
	s.macs.New = func() any {
		st := &macState{macs: make([]hash.Hash, len(s.keys))}
		for i, k := range s.keys {
			st.macs[i] = hmac.New(sha256.New, k)
		}
		return st
	}
	return s
}

// state returns a macState with head set for channel; put it back with
// s.macs.Put.
func (s *Signer) state(channel string) *macState {
	st := s.macs.Get().(*macState)
	st.head = append(st.head[:0], macContext...)
	st.head = binary.AppendUvarint(st.head, uint64(len(channel)))
	st.head = append(st.head, channel...)
	return st
}

// Size returns the number of bytes Encode will write for e.
func (s *Signer) Size(e *Envelope) int { return e.Size() + TagSize }

// Encode returns e in wire form, signed for channel with the first key, in
// one allocation.
func (s *Signer) Encode(channel string, e *Envelope) []byte {
	b := e.appendTo(make([]byte, 0, s.Size(e)), flagSigned)
	st := s.state(channel)
	defer s.macs.Put(st)
	m := st.macs[0]
	m.Reset()
	m.Write(st.head)
	m.Write(b)
	return m.Sum(b)
}

// Decode verifies that b is an envelope signed for channel by one of the
// signer's keys and parses it, without the tag; the returned Payload
// aliases b. Bytes that do not verify yield an error wrapping ErrForged;
// verified bytes that do not parse, one wrapping ErrMalformed. Every key is
// tried, each tag compared in constant time.
func (s *Signer) Decode(channel string, b []byte) (Envelope, error) {
	if len(b) < 3 || b[2]&flagSigned == 0 {
		return Envelope{}, fmt.Errorf("%w: not signed", ErrForged)
	}
	if len(b) < 3+TagSize {
		return Envelope{}, fmt.Errorf("%w: truncated", ErrForged)
	}
	body, tag := b[:len(b)-TagSize], b[len(b)-TagSize:]
	if !s.verify(channel, body, tag) {
		return Envelope{}, fmt.Errorf("%w: no key's tag matches", ErrForged)
	}
	return decode(body, flagSigned)
}

// verify reports whether tag is the tag of body on channel by any key. It
// computes and compares every key's tag, whichever matches.
func (s *Signer) verify(channel string, body, tag []byte) bool {
	st := s.state(channel)
	defer s.macs.Put(st)
	ok := 0
	for _, m := range st.macs {
		m.Reset()
		m.Write(st.head)
		m.Write(body)
		ok |= subtle.ConstantTimeCompare(m.Sum(st.sum[:0]), tag)
	}
	return ok == 1
}
