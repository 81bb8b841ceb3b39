// Package envelope encodes and decodes the messages that wshub hubs exchange
// over a backplane.
//
// Layout, version 1:
//
//	byte 0      version (1)
//	byte 1      op
//	byte 2      flags (bit 0: binary payload; bit 1: client follows code;
//	            bit 2: signed, a tag follows the payload; bit 3: publish
//	            time follows code and client; bit 7: extensions follow)
//	uvarint n + n bytes   target (user ID, topic or session ID)
//	uvarint n + n bytes   arg (excluded session ID, topic, or close reason)
//	uvarint     code (close status code for OpDisconnect, else 0)
//	uvarint n + n bytes   client, only with bit 1: the client key of the
//	                      excluded session of an OpTopic
//	uvarint     published, only with bit 3: when the message was published,
//	            in Unix microseconds (never 0), for the receiver's latency
//	            measure; hubs write it on every OpUser, OpTopic and OpSession
//	uvarint n + n bytes   extensions, only with bit 7: optional fields of
//	            later versions, which a decoder that does not know them
//	            skips whole (none is defined yet)
//	rest        payload, byte for byte
//	32 bytes    tag, only with bit 2: HMAC-SHA256 of the channel and of
//	            every byte before the tag (see Signer)
//
// The payload is last, before the tag, so that a decoded envelope shares its
// bytes with the encoded one: a broadcast is encoded once and every recipient
// gets a sub-slice of the same buffer, signed or not.
//
// Decode rejects a signed envelope as malformed: only a Signer, which
// verifies the tag, strips it. A decoder that predates signing rejects the
// unknown flag the same way, so no hub ever delivers a tag as payload.
//
// An unknown flag is malformed: flags are for what a receiver must
// understand. An optional field that later versions add goes in the
// extensions block (bit 7), which every decoder since this version skips
// when it does not know what is inside, so that a cluster can be upgraded
// node by node across such an addition. (A hub that predates the publish
// time and the extensions block drops every message that carries either.)
package envelope

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Version is the envelope format version this package writes and reads.
const Version = 1

// Op is what an envelope asks the receiving hub to do.
type Op byte

// The operations.
const (
	OpUser       Op = iota + 1 // deliver Payload to every session of user Target
	OpTopic                    // deliver Payload to every session in topic Target, except session Arg
	OpSession                  // deliver Payload to session Target
	OpJoin                     // join every session of user Target to topic Arg
	OpLeave                    // remove every session of user Target from topic Arg
	OpDisconnect               // close every session of user Target with Code and reason Arg
	OpFlush                    // no-op marker a node sends itself; Target is a token
	// OpJoinAck and OpLeaveAck are OpJoin and OpLeave sent to one node's
	// inbox, which acknowledges them once applied with an OpAck to the
	// node and token in Payload ("<node> <token>").
	OpJoinAck
	OpLeaveAck
	OpAck // acknowledges token Target from node Arg; Code 0 applied, 1 not confirmed
	opMax
)

// Flags.
const (
	// FlagBinary marks a binary payload; without it the payload is text.
	FlagBinary byte = 1
	// flagClient marks an envelope with a Client field. Encode sets it
	// when Client is not empty.
	flagClient byte = 2
	// flagSigned marks an envelope that ends with a tag (see Signer).
	flagSigned byte = 4
	// flagPublished marks an envelope with a Published field. Encode sets
	// it when Published is not 0.
	flagPublished byte = 8
	// flagExtensions marks an envelope with an extensions block, skipped
	// by this version (see the package documentation).
	flagExtensions byte = 0x80
)

// ErrMalformed is returned by Decode for bytes that are not a valid envelope.
var ErrMalformed = errors.New("envelope: malformed")

// Envelope is one decoded message.
type Envelope struct {
	Op     Op
	Flags  byte
	Target string
	Arg    string
	Code   uint64
	// Client is, for an OpTopic, the client key of the excluded session
	// (see Arg), so that the same client resuming on a new session still
	// skips what was excluded from its earlier one.
	Client string
	// Published is when the message was published, in Unix microseconds
	// by the publishing node's clock; 0 when the envelope does not say.
	Published uint64
	Payload   []byte
}

// Size returns the number of bytes Encode will write for e.
func (e *Envelope) Size() int {
	n := 3 + uvarintLen(uint64(len(e.Target))) + len(e.Target) +
		uvarintLen(uint64(len(e.Arg))) + len(e.Arg) + uvarintLen(e.Code) + len(e.Payload)
	if e.Client != "" {
		n += uvarintLen(uint64(len(e.Client))) + len(e.Client)
	}
	if e.Published != 0 {
		n += uvarintLen(e.Published)
	}
	return n
}

// Encode returns e in wire form, unsigned, in one allocation.
func (e *Envelope) Encode() []byte {
	return e.appendTo(make([]byte, 0, e.Size()), 0)
}

// appendTo appends e in wire form to b, with extra flags set; any tag is
// the caller's to append.
func (e *Envelope) appendTo(b []byte, extra byte) []byte {
	flags := e.Flags&^(flagClient|flagSigned|flagPublished) | extra
	if e.Client != "" {
		flags |= flagClient
	}
	if e.Published != 0 {
		flags |= flagPublished
	}
	b = append(b, Version, byte(e.Op), flags)
	b = binary.AppendUvarint(b, uint64(len(e.Target)))
	b = append(b, e.Target...)
	b = binary.AppendUvarint(b, uint64(len(e.Arg)))
	b = append(b, e.Arg...)
	b = binary.AppendUvarint(b, e.Code)
	if e.Client != "" {
		b = binary.AppendUvarint(b, uint64(len(e.Client)))
		b = append(b, e.Client...)
	}
	if e.Published != 0 {
		b = binary.AppendUvarint(b, e.Published)
	}
	return append(b, e.Payload...)
}

// Decode parses an unsigned envelope. The returned Payload aliases b; Target
// and Arg are copies. A signed envelope is malformed here: use a Signer.
func Decode(b []byte) (Envelope, error) {
	return decode(b, 0)
}

// decode parses b, whose flags may include the extra ones, which are
// cleared in the result.
func decode(b []byte, extra byte) (Envelope, error) {
	var e Envelope
	if len(b) < 3 {
		return e, fmt.Errorf("%w: %d bytes", ErrMalformed, len(b))
	}
	if b[0] != Version {
		return e, fmt.Errorf("%w: version %d", ErrMalformed, b[0])
	}
	e.Op, e.Flags = Op(b[1]), b[2]
	if e.Op == 0 || e.Op >= opMax {
		return e, fmt.Errorf("%w: op %d", ErrMalformed, b[1])
	}
	if e.Flags&^(FlagBinary|flagClient|flagPublished|flagExtensions|extra) != 0 {
		if e.Flags&flagSigned != 0 && extra&flagSigned == 0 {
			return e, fmt.Errorf("%w: signed, and no key to verify it", ErrMalformed)
		}
		return e, fmt.Errorf("%w: flags %#x", ErrMalformed, e.Flags)
	}
	e.Flags &^= extra
	rest := b[3:]
	var err error
	if e.Target, rest, err = readString(rest); err != nil {
		return e, fmt.Errorf("%w: target: %w", ErrMalformed, err)
	}
	if e.Arg, rest, err = readString(rest); err != nil {
		return e, fmt.Errorf("%w: arg: %w", ErrMalformed, err)
	}
	code, n := binary.Uvarint(rest)
	if n <= 0 {
		return e, fmt.Errorf("%w: code", ErrMalformed)
	}
	e.Code = code
	rest = rest[n:]
	if e.Flags&flagClient != 0 {
		if e.Client, rest, err = readString(rest); err != nil || e.Client == "" {
			return e, fmt.Errorf("%w: client", ErrMalformed)
		}
		e.Flags &^= flagClient
	}
	if e.Flags&flagPublished != 0 {
		t, n := binary.Uvarint(rest)
		if n <= 0 || t == 0 {
			return e, fmt.Errorf("%w: published", ErrMalformed)
		}
		e.Published = t
		rest = rest[n:]
		e.Flags &^= flagPublished
	}
	if e.Flags&flagExtensions != 0 {
		// Fields of a later version: skipped whole.
		l, n := binary.Uvarint(rest)
		if n <= 0 || l > uint64(len(rest)-n) {
			return e, fmt.Errorf("%w: extensions", ErrMalformed)
		}
		rest = rest[n+int(l):]
		e.Flags &^= flagExtensions
	}
	e.Payload = rest
	return e, nil
}

var errShort = errors.New("truncated")

func readString(b []byte) (string, []byte, error) {
	l, n := binary.Uvarint(b)
	if n <= 0 {
		return "", nil, errShort
	}
	b = b[n:]
	if l > uint64(len(b)) {
		return "", nil, errShort
	}
	return string(b[:l]), b[l:], nil
}

func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}
