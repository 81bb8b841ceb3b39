package envelope

import (
	"bytes"
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRoundTrip(t *testing.T) {
	big := bytes.Repeat([]byte{0xff, 0}, 1<<19)
	tests := []struct {
		name string
		e    Envelope
	}{
		{"user text", Envelope{Op: OpUser, Target: "42", Payload: []byte("hello")}},
		{"topic binary except", Envelope{Op: OpTopic, Flags: FlagBinary, Target: "room", Arg: "n1.7", Payload: []byte{0, 1, 2, 255}}},
		{"topic except client", Envelope{Op: OpTopic, Target: "room", Arg: "n1.7", Client: "tab-1", Payload: []byte("x")}},
		{"published", Envelope{Op: OpUser, Target: "42", Published: 1767225600123456, Payload: []byte("hello")}},
		{"published one", Envelope{Op: OpSession, Target: "n1.1", Published: 1, Payload: []byte{}}},
		{"published and client", Envelope{Op: OpTopic, Flags: FlagBinary, Target: "room", Arg: "n1.7", Client: "tab-1", Published: 1<<63 + 5, Payload: []byte{9}}},
		{"empty payload", Envelope{Op: OpSession, Target: "n1.1", Payload: []byte{}}},
		{"disconnect", Envelope{Op: OpDisconnect, Target: "u", Arg: "bye", Code: 4000}},
		{"long target", Envelope{Op: OpJoin, Target: string(bytes.Repeat([]byte("x"), 300)), Arg: "t"}},
		{"1 MiB payload", Envelope{Op: OpUser, Flags: FlagBinary, Target: "u", Payload: big}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.e.Encode()
			assert.Equal(t, tt.e.Size(), len(b))
			assert.Equal(t, tt.e.Size(), cap(b), "Encode allocates exactly once")
			got, err := Decode(b)
			require.NoError(t, err)
			assert.Equal(t, tt.e.Op, got.Op)
			assert.Equal(t, tt.e.Flags, got.Flags)
			assert.Equal(t, tt.e.Target, got.Target)
			assert.Equal(t, tt.e.Arg, got.Arg)
			assert.Equal(t, tt.e.Code, got.Code)
			assert.Equal(t, tt.e.Client, got.Client)
			assert.Equal(t, tt.e.Published, got.Published)
			assert.True(t, bytes.Equal(tt.e.Payload, got.Payload), "payload byte for byte")
		})
	}
}

func TestDecodeMalformed(t *testing.T) {
	valid := (&Envelope{Op: OpUser, Target: "abc", Arg: "d", Payload: []byte("p")}).Encode()
	tests := []struct {
		name string
		b    []byte
	}{
		{"nil", nil},
		{"short", []byte{1, 1}},
		{"bad version", []byte{2, 1, 0, 0, 0, 0}},
		{"op zero", []byte{1, 0, 0, 0, 0, 0}},
		{"op too big", []byte{1, byte(opMax), 0, 0, 0, 0}},
		{"bad flags", []byte{1, 1, 4, 0, 0, 0}},
		{"unknown flag", []byte{1, 1, 16, 0, 0, 0}},
		{"published flag without published", []byte{1, 1, 8, 0, 0, 0}},
		{"published zero", []byte{1, 1, 8, 0, 0, 0, 0}},
		{"published bad varint", []byte{1, 1, 8, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}},
		{"client flag without client", []byte{1, 2, 2, 0, 0, 0}},
		{"empty client", []byte{1, 2, 2, 0, 0, 0, 0}},
		{"target overruns", []byte{1, 1, 0, 10, 'a'}},
		{"no arg", []byte{1, 1, 0, 1, 'a'}},
		{"no code", []byte{1, 1, 0, 1, 'a', 0}},
		{"bad varint", []byte{1, 1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}},
		{"truncated valid", valid[:5]},
		{"extensions overrun", []byte{1, 1, 0x80, 0, 0, 0, 5, 'a'}},
		{"extensions without their length", []byte{1, 1, 0x80, 0, 0, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode(tt.b)
			require.Error(t, err)
			assert.True(t, errors.Is(err, ErrMalformed))
		})
	}
}

// The publish time is optional: an envelope without it is written byte for
// byte as before the field existed, and one with it only adds the flag bit
// and the uvarint before the payload.
func TestPublishedIsOptional(t *testing.T) {
	without := Envelope{Op: OpUser, Target: "u", Payload: []byte("p")}
	assert.Equal(t, []byte{1, 1, 0, 1, 'u', 0, 0, 'p'}, without.Encode())
	with := without
	with.Published = 300 // two bytes as a uvarint
	assert.Equal(t, []byte{1, 1, 8, 1, 'u', 0, 0, 0xac, 0x02, 'p'}, with.Encode())
	got, err := Decode(without.Encode())
	require.NoError(t, err)
	assert.Zero(t, got.Published, "a receiver of an envelope without the time finds none")
}

// A field of a later version, in the extensions block, is skipped whole:
// the rest of the envelope, the payload included, reads as if it were not
// there, so nodes of two versions can share a cluster during an upgrade.
func TestExtensionsAreSkipped(t *testing.T) {
	ext := []byte{4, 1, 2, 'x', 'y'} // an unknown record: key 1, 2 bytes
	for _, tt := range []struct {
		name string
		b    []byte
		want Envelope
	}{
		{"alone", append(append([]byte{1, 1, 0x80, 1, 'u', 0, 0}, ext...), 'p'),
			Envelope{Op: OpUser, Target: "u", Payload: []byte("p")}},
		{"after client and publish time", append(append([]byte{1, 2, 0x8a, 1, 't', 0, 0, 1, 'c', 0xac, 0x02}, ext...), 'p', 'q'),
			Envelope{Op: OpTopic, Target: "t", Client: "c", Published: 300, Payload: []byte("pq")}},
		{"empty, no payload", []byte{1, 1, 0x81, 1, 'u', 0, 0, 0},
			Envelope{Op: OpUser, Flags: FlagBinary, Target: "u", Payload: []byte{}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode(tt.b)
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte{1, 1, 0x80, 1, 'u', 0, 0, 4, 1, 2, 'x', 'y', 'p'})
	f.Add((&Envelope{Op: OpTopic, Target: "room", Arg: "s", Payload: []byte("hi")}).Encode())
	f.Add((&Envelope{Op: OpDisconnect, Target: "u", Arg: "r", Code: 1000}).Encode())
	f.Add((&Envelope{Op: OpUser, Target: "u", Published: 1767225600123456, Payload: []byte("hi")}).Encode())
	f.Add((&Envelope{Op: OpTopic, Target: "t", Client: "c", Published: 1, Payload: []byte{0}}).Encode())
	f.Add([]byte{1, 1, 0})
	f.Add([]byte{1, 1, 8, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := Decode(b)
		if err != nil {
			return
		}
		// Whatever decodes must encode back to the same bytes, except that a
		// non-minimal varint in the input is written minimally.
		again, err := Decode(e.Encode())
		require.NoError(t, err)
		require.Equal(t, e, again)
	})
}

func BenchmarkEncode(b *testing.B) {
	e := Envelope{Op: OpTopic, Target: "room-1", Arg: "node.123", Payload: make([]byte, 128)}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		_ = e.Encode()
	}
}

func BenchmarkDecode(b *testing.B) {
	buf := (&Envelope{Op: OpTopic, Target: "room-1", Arg: "node.123", Payload: make([]byte, 128)}).Encode()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := Decode(buf); err != nil {
			b.Fatal(err)
		}
	}
}
