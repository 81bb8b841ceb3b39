package stream

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// A frame is a function of its number, carries its header, and moves.
func TestGenerate(t *testing.T) {
	f := Generate(7, 80, 60)
	require.Len(t, f, HeaderLen+80*60)
	assert.Equal(t, f, Generate(7, 80, 60), "the same number makes the same frame")
	seq, ok := Seq(f)
	assert.True(t, ok)
	assert.EqualValues(t, 7, seq)
	assert.Equal(t, []byte{0, 80, 0, 60}, f[4:8])
	assert.NotEqual(t, f[HeaderLen:], Generate(8, 80, 60)[HeaderLen:], "consecutive frames differ")
	_, ok = Seq(f[:HeaderLen-1])
	assert.False(t, ok)
}

func TestRecords(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
		max  int
		err  error
	}{
		{"empty", []byte{}, 10, nil},
		{"frame", Generate(1, 8, 8), MaxRecord, nil},
		{"at the limit", make([]byte, 10), 10, nil},
		{"too large", make([]byte, 11), 10, ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			require.NoError(t, WriteRecord(&b, tc.data))
			got, err := ReadRecord(&b, tc.max)
			if tc.err != nil {
				assert.ErrorIs(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.data, got)
		})
	}
	_, err := ReadRecord(bytes.NewReader([]byte{0, 0, 0, 5, 1}), 10)
	assert.ErrorIs(t, err, io.ErrUnexpectedEOF, "a truncated record")
}

// The streamer sends the room, then its frames; when the ingest closes the
// connection it moves to the next address and carries on with the next
// frame number.
func TestStreamerFailsOver(t *testing.T) {
	lns := make([]net.Listener, 2)
	addrs := make([]string, 2)
	for i := range lns {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		defer ln.Close()
		lns[i], addrs[i] = ln, ln.Addr().String()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s := &Streamer{Addrs: addrs, Room: "r", FPS: 200, Width: 4, Height: 4, Frames: 6, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()

	// read takes the room and n frames from the next connection of ln.
	read := func(ln net.Listener, n int) (seqs []uint32) {
		c, err := ln.Accept()
		require.NoError(t, err)
		defer c.Close()
		room, err := ReadRecord(c, 64)
		require.NoError(t, err)
		require.Equal(t, "r", string(room))
		for range n {
			f, err := ReadRecord(c, MaxRecord)
			require.NoError(t, err)
			seq, _ := Seq(f)
			require.Equal(t, Generate(seq, 4, 4), f)
			seqs = append(seqs, seq)
		}
		return seqs
	}
	first := read(lns[0], 2)
	assert.Equal(t, []uint32{0, 1}, first)
	// Closed after two frames: the streamer finds out on a write, so the
	// next frame or two may be lost, as they would be on a real failure.
	second := read(lns[1], 1)
	require.Len(t, second, 1)
	assert.GreaterOrEqual(t, second[0], uint32(2))
	cancel()
	err := <-done
	assert.False(t, err != nil && !errors.Is(err, context.Canceled), "Run: %v", err)
}
