package wshub

import (
	"bytes"
	"errors"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// countingConn records the writes that reach the socket.
type countingConn struct {
	net.Conn
	mu       sync.Mutex
	writes   int
	largest  int // the largest write
	data     bytes.Buffer
	failWith error // returned by every write once set
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failWith != nil {
		return 0, c.failWith
	}
	c.writes++
	c.largest = max(c.largest, len(p))
	return c.data.Write(p)
}

func (c *countingConn) SetWriteDeadline(time.Time) error { return nil }

// text returns a text message of data, and its frame.
func text(data []byte) (outMsg, []byte) {
	return outMsg{typ: websocket.MessageText, data: data}, append(appendFrameHeader(nil, websocket.MessageText, len(data)), data...)
}

func TestCorkConnBatchesWrites(t *testing.T) {
	under := &countingConn{}
	c := newCorkConn(under)

	m, a := text([]byte("a"))
	require.NoError(t, c.send(&m))
	assert.Equal(t, 1, under.writes, "uncorked writes go straight through, header and payload in one")

	require.NoError(t, c.cork(time.Second, 0))
	want := append([]byte(nil), a...)
	for i := 0; i < 100; i++ {
		m, f := text([]byte("bc"))
		require.NoError(t, c.send(&m))
		want = append(want, f...)
	}
	assert.Equal(t, 1, under.writes, "corked writes are held")
	require.NoError(t, c.uncork())
	assert.Equal(t, 2, under.writes, "one write for the whole batch")
	assert.Equal(t, want, under.data.Bytes(), "bytes and order kept")

	// A batch larger than the limit goes out in pieces, order kept.
	under.data.Reset()
	require.NoError(t, c.cork(time.Second, 0))
	m1, f1 := text([]byte{1})
	mb, fb := text(bytes.Repeat([]byte{7}, corkLimit+1))
	m2, f2 := text([]byte{2})
	for _, m := range []*outMsg{&m1, &mb, &m2} {
		require.NoError(t, c.send(m))
	}
	require.NoError(t, c.uncork())
	assert.True(t, bytes.Equal(append(append(f1, fb...), f2...), under.data.Bytes()))
}

func TestCorkConnReportsWriteErrors(t *testing.T) {
	a, b := net.Pipe()
	c := newCorkConn(a)
	require.NoError(t, c.cork(time.Second, 0))
	b.Close()
	m, _ := text([]byte("x"))
	require.NoError(t, c.send(&m), "buffered")
	assert.Error(t, c.uncork(), "the failed flush is reported")
	a.Close()
}

// Large buffers reach the socket in pieces of at most writeChunk, corked or
// not, so that the write deadline, renewed after each, measures progress
// rather than the time a whole batch takes.
func TestCorkConnWritesInChunks(t *testing.T) {
	under := &countingConn{}
	c := newCorkConn(under)
	big := make([]byte, 5*writeChunk+1)
	for i := range big {
		big[i] = byte(i)
	}
	m, fbig := text(big)
	require.NoError(t, c.send(&m))
	assert.Equal(t, fbig, under.data.Bytes())
	assert.Equal(t, 7, under.writes, "the header, then the payload in pieces")
	assert.Equal(t, writeChunk, under.largest)

	under.data.Reset()
	require.NoError(t, c.cork(time.Second, 0))
	var want []byte
	for i := 0; i < 3; i++ {
		m, f := text(big[:corkLimit-20]) // fills the cork buffer
		require.NoError(t, c.send(&m))
		want = append(want, f...)
	}
	m, f := text(big) // over corkLimit: goes straight out
	require.NoError(t, c.send(&m))
	want = append(want, f...)
	require.NoError(t, c.uncork())
	assert.Equal(t, writeChunk, under.largest)
	assert.True(t, bytes.Equal(want, under.data.Bytes()), "bytes and order kept")
	idle, writing := c.idle(time.Time{})
	assert.False(t, writing)
	assert.Less(t, idle, time.Hour, "the last write's progress is recorded")
}

// A write that times out on the socket reports the deadline error, which the
// session counts as a stalled client.
func TestCorkConnReportsTimeouts(t *testing.T) {
	under := &countingConn{failWith: &net.OpError{Op: "write", Net: "tcp", Err: os.ErrDeadlineExceeded}}
	c := newCorkConn(under)
	require.NoError(t, c.cork(time.Second, 0))
	m, _ := text(make([]byte, corkLimit+1))
	err := c.send(&m)
	assert.True(t, errors.Is(err, os.ErrDeadlineExceeded), "%v", err)
}

// The library's frames reach the socket whole, however the library splits
// them over its writes, and never inside a data frame: the rest of one the
// fan-out began goes first; after the library's close frame, no data frame
// goes.
func TestCorkConnKeepsLibraryFramesWhole(t *testing.T) {
	under := &countingConn{}
	c := newCorkConn(under)
	pong := []byte{0x8a, 3, 'a', 'b', 'c'}
	big := append([]byte{0x8a, 126, 0, 200}, bytes.Repeat([]byte{9}, 200)...) // not a control frame the library makes, but a frame
	// Split anywhere: nothing goes out until a frame is whole.
	for _, cut := range []int{1, 2, 3, 4} {
		under.data.Reset()
		_, err := c.Write(big[:cut])
		require.NoError(t, err)
		assert.Zero(t, under.data.Len(), "cut at %d", cut)
		_, err = c.Write(append(big[cut:], pong[:1]...))
		require.NoError(t, err)
		assert.Equal(t, big, under.data.Bytes(), "cut at %d", cut)
		_, err = c.Write(pong[1:])
		require.NoError(t, err)
		assert.Equal(t, append(append([]byte(nil), big...), pong...), under.data.Bytes())
	}

	// The rest of a data frame begun goes before the library's next frame.
	under.data.Reset()
	m, f := text([]byte("hello, world"))
	c.rest = f[3:] // as writeThrough leaves it when the socket took 3 bytes
	_, err := c.Write(pong)
	require.NoError(t, err)
	assert.Equal(t, append(append([]byte(nil), f[3:]...), pong...), under.data.Bytes())
	rest := outMsg{typ: restMsg}
	require.NoError(t, c.send(&rest), "nothing left to finish")
	assert.Equal(t, append(append([]byte(nil), f[3:]...), pong...), under.data.Bytes())

	// No data frame after the library's close frame.
	_, err = c.Write([]byte{0x88, 2, 0x03, 0xe8})
	require.NoError(t, err)
	require.ErrorIs(t, c.send(&m), net.ErrClosed)
}

func TestFrameHeader(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 127, 0xffff, 0x10000, 1 << 20} {
		m := outMsg{typ: websocket.MessageBinary, data: make([]byte, n)}
		f, at := encodeFrame(m.typ, "", false, m.data)
		assert.Equal(t, frameHeaderLen(n), at, "n=%d", n)
		assert.Equal(t, len(f), frameLen(f), "n=%d", n)
		framed := outMsg{typ: frameMsg, data: f}
		assert.Equal(t, n, framed.size(), "a frame counts its payload, n=%d", n)
		assert.Equal(t, -1, frameLen(f[:at-1]), "n=%d", n)
	}
}

// tlsLike wraps a connection and exposes it with NetConn, as *tls.Conn does.
type tlsLike struct{ net.Conn }

func (c tlsLike) NetConn() net.Conn { return c.Conn }

// setWriteBuffer finds the TCP socket under a wrapper and bounds what its
// kernel takes from a writer whose peer does not read; sockets that are not
// TCP are left alone.
func TestCorkConnBoundsTheKernelSendBuffer(t *testing.T) {
	accepted := func(t *testing.T, size int) int {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		defer ln.Close()
		peer, err := net.Dial("tcp", ln.Addr().String())
		require.NoError(t, err)
		defer peer.Close()
		require.NoError(t, peer.(*net.TCPConn).SetReadBuffer(4<<10)) // the peer holds little
		nc, err := ln.Accept()
		require.NoError(t, err)
		defer nc.Close()
		c := &corkConn{Conn: tlsLike{nc}}
		require.NoError(t, c.setWriteBuffer(size))
		// The peer never reads: the writes stop where the buffers are full.
		require.NoError(t, nc.SetWriteDeadline(time.Now().Add(300*time.Millisecond)))
		total, chunk := 0, make([]byte, 16<<10)
		for total < 64<<20 {
			n, err := nc.Write(chunk)
			total += n
			if err != nil {
				require.ErrorIs(t, err, os.ErrDeadlineExceeded)
				break
			}
		}
		return total
	}
	bounded := accepted(t, 64<<10)
	assert.Less(t, bounded, 1<<20, "bytes taken by the kernel with a 64 KiB send buffer")
	t.Logf("taken with a 64 KiB send buffer: %d bytes; with the system's autotuning: %d", bounded, accepted(t, -1))

	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	assert.NoError(t, (&corkConn{Conn: a}).setWriteBuffer(64<<10), "not TCP: left alone")
}
