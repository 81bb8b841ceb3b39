package envelope

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var (
	key1 = []byte("0123456789abcdef-key-one")
	key2 = []byte("0123456789abcdef-key-two")
)

func TestSignedRoundTrip(t *testing.T) {
	s := NewSigner([][]byte{key1})
	for _, e := range []Envelope{
		{Op: OpUser, Target: "42", Payload: []byte("hello")},
		{Op: OpTopic, Flags: FlagBinary, Target: "room", Arg: "n1.7", Client: "tab", Payload: []byte{0, 1, 255}},
		{Op: OpTopic, Target: "room", Client: "tab", Published: 1767225600123456, Payload: []byte("timed")},
		{Op: OpDisconnect, Target: "u", Arg: "bye", Code: 4000},
		{Op: OpFlush, Target: "1", Payload: []byte{}},
	} {
		b := s.Encode("u:42", &e)
		assert.Equal(t, s.Size(&e), len(b))
		assert.Equal(t, s.Size(&e), cap(b), "Encode allocates exactly once")
		got, err := s.Decode("u:42", b)
		require.NoError(t, err)
		assert.Equal(t, e.Op, got.Op)
		assert.Equal(t, e.Flags, got.Flags, "the signed flag is not the caller's")
		assert.Equal(t, e.Target, got.Target)
		assert.Equal(t, e.Arg, got.Arg)
		assert.Equal(t, e.Code, got.Code)
		assert.Equal(t, e.Client, got.Client)
		assert.Equal(t, e.Published, got.Published)
		assert.True(t, bytes.Equal(e.Payload, got.Payload), "payload byte for byte, without the tag")
		if len(got.Payload) > 0 {
			assert.Same(t, &b[len(b)-TagSize-len(got.Payload)], &got.Payload[0], "the payload aliases the envelope")
		}
	}
}

// Whatever does not carry a valid tag for its channel is forged.
func TestSignedDecodeRejects(t *testing.T) {
	s := NewSigner([][]byte{key1})
	e := Envelope{Op: OpUser, Target: "alice", Payload: []byte("hi")}
	valid := s.Encode("u:alice", &e)
	tests := map[string]struct {
		channel string
		b       []byte
	}{
		"nil":           {"u:alice", nil},
		"unsigned":      {"u:alice", e.Encode()},
		"truncated":     {"u:alice", valid[:len(valid)-1]},
		"tag only":      {"u:alice", valid[len(valid)-TagSize:]},
		"header only":   {"u:alice", valid[:3]},
		"other channel": {"u:bob", valid},
		"other key":     {"u:alice", NewSigner([][]byte{key2}).Encode("u:alice", &e)},
		"signed flag set, tag missing": {"u:alice",
			(&Envelope{Op: OpUser, Target: "alice", Payload: bytes.Repeat([]byte("x"), TagSize)}).appendTo(nil, flagSigned)},
	}
	for i := range valid {
		b := bytes.Clone(valid)
		b[i] ^= 0x20
		tests[fmt.Sprint("flipped byte ", i)] = struct {
			channel string
			b       []byte
		}{"u:alice", b}
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := s.Decode(tt.channel, tt.b)
			require.Error(t, err)
			assert.True(t, errors.Is(err, ErrForged), "%v", err)
		})
	}
}

// A verified envelope that does not parse is malformed, not forged.
func TestSignedMalformed(t *testing.T) {
	s := NewSigner([][]byte{key1})
	b := (&Envelope{Op: OpUser, Target: "a"}).appendTo(nil, flagSigned|16) // an unknown flag
	st := s.state("c")
	m := st.macs[0]
	m.Reset()
	m.Write(st.head)
	m.Write(b)
	b = m.Sum(b)
	_, err := s.Decode("c", b)
	assert.True(t, errors.Is(err, ErrMalformed), "%v", err)
}

// A decoder without keys does not deliver a tag as payload: a signed
// envelope is malformed to it.
func TestDecodeRejectsSigned(t *testing.T) {
	b := NewSigner([][]byte{key1}).Encode("u:a", &Envelope{Op: OpUser, Target: "a", Payload: []byte("p")})
	_, err := Decode(b)
	require.Error(t, err)
	assert.True(t, errors.Is(err, ErrMalformed))
	assert.Contains(t, err.Error(), "signed")
}

// A signer accepts a tag by any of its keys and signs with the first.
func TestSignerKeyRotation(t *testing.T) {
	e := Envelope{Op: OpUser, Target: "a", Payload: []byte("p")}
	newFirst := NewSigner([][]byte{key2, key1})
	for name, tt := range map[string]struct {
		verifier *Signer
		ok       bool
	}{
		"both keys, other order": {NewSigner([][]byte{key1, key2}), true},
		"the signing key alone":  {NewSigner([][]byte{key2}), true},
		"the old key alone":      {NewSigner([][]byte{key1}), false},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := tt.verifier.Decode("u:a", newFirst.Encode("u:a", &e))
			assert.Equal(t, tt.ok, err == nil, "%v", err)
		})
	}
	assert.Nil(t, NewSigner(nil))
}

// The signer keeps its own copy of the keys.
func TestSignerCopiesKeys(t *testing.T) {
	k := bytes.Clone(key1)
	s := NewSigner([][]byte{k})
	b := s.Encode("c", &Envelope{Op: OpUser, Target: "a"})
	k[0] ^= 1
	_, err := s.Decode("c", b)
	assert.NoError(t, err)
}

func FuzzSignedDecode(f *testing.F) {
	s := NewSigner([][]byte{key1, key2})
	f.Add("u:a", s.Encode("u:a", &Envelope{Op: OpTopic, Target: "room", Arg: "s", Payload: []byte("hi")}))
	f.Add("u:a", s.Encode("u:a", &Envelope{Op: OpUser, Target: "a", Published: 1767225600123456, Payload: []byte("timed")}))
	f.Add("u:a", []byte{1, 1, 4})
	f.Fuzz(func(t *testing.T, channel string, b []byte) {
		e, err := s.Decode(channel, b)
		if err != nil {
			return
		}
		again, err := s.Decode(channel, s.Encode(channel, &e))
		require.NoError(t, err)
		require.Equal(t, e, again)
	})
}

func BenchmarkEncodeSigned(b *testing.B) {
	s := NewSigner([][]byte{key1})
	e := Envelope{Op: OpTopic, Target: "room-1", Arg: "node.123", Payload: make([]byte, 128)}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		_ = s.Encode("t:room-1", &e)
	}
}

func BenchmarkDecodeSigned(b *testing.B) {
	for _, keys := range []int{1, 2} {
		b.Run([]string{"", "keys=1", "keys=2"}[keys], func(b *testing.B) {
			s := NewSigner([][]byte{key1, key2}[:keys])
			buf := s.Encode("t:room-1", &Envelope{Op: OpTopic, Target: "room-1", Arg: "node.123", Payload: make([]byte, 128)})
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, err := s.Decode("t:room-1", buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
