package wshub

import (
	"bytes"
	"errors"
	"net"
	"os"
	"sync"
	"testing"
	"time"

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

func TestCorkConnBatchesWrites(t *testing.T) {
	under := &countingConn{}
	c := &corkConn{Conn: under}

	_, err := c.Write([]byte("a"))
	require.NoError(t, err)
	assert.Equal(t, 1, under.writes, "uncorked writes go straight through")

	require.NoError(t, c.cork(time.Second))
	for i := 0; i < 100; i++ {
		_, err := c.Write([]byte("bc"))
		require.NoError(t, err)
	}
	assert.Equal(t, 1, under.writes, "corked writes are held")
	require.NoError(t, c.uncork())
	assert.Equal(t, 2, under.writes, "one write for the whole batch")
	assert.Equal(t, "a"+string(bytes.Repeat([]byte("bc"), 100)), under.data.String(), "bytes and order kept")

	// A batch larger than the limit goes out in pieces, order kept.
	under.data.Reset()
	require.NoError(t, c.cork(time.Second))
	big := bytes.Repeat([]byte{7}, corkLimit+1)
	_, err = c.Write([]byte{1})
	require.NoError(t, err)
	_, err = c.Write(big)
	require.NoError(t, err)
	_, err = c.Write([]byte{2})
	require.NoError(t, err)
	require.NoError(t, c.uncork())
	want := append(append([]byte{1}, big...), 2)
	assert.True(t, bytes.Equal(want, under.data.Bytes()))
}

func TestCorkConnReportsWriteErrors(t *testing.T) {
	a, b := net.Pipe()
	c := &corkConn{Conn: a}
	require.NoError(t, c.cork(time.Second))
	b.Close()
	_, err := c.Write([]byte("x"))
	require.NoError(t, err, "buffered")
	assert.Error(t, c.uncork(), "the failed flush is reported")
	a.Close()
}

// Large buffers reach the socket in pieces of at most writeChunk, corked or
// not, so that the write deadline, renewed after each, measures progress
// rather than the time a whole batch takes.
func TestCorkConnWritesInChunks(t *testing.T) {
	under := &countingConn{}
	c := &corkConn{Conn: under}
	big := make([]byte, 5*writeChunk+1)
	for i := range big {
		big[i] = byte(i)
	}
	n, err := c.Write(big)
	require.NoError(t, err)
	assert.Equal(t, len(big), n)
	assert.Equal(t, 6, under.writes)
	assert.Equal(t, writeChunk, under.largest)

	under.data.Reset()
	require.NoError(t, c.cork(time.Second))
	for i := 0; i < 3; i++ {
		_, err := c.Write(big[:corkLimit-1]) // fills the cork buffer
		require.NoError(t, err)
	}
	_, err = c.Write(big) // over corkLimit: goes straight out
	require.NoError(t, err)
	require.NoError(t, c.uncork())
	assert.Equal(t, writeChunk, under.largest)
	want := append(append(append(append([]byte(nil), big[:corkLimit-1]...), big[:corkLimit-1]...), big[:corkLimit-1]...), big...)
	assert.True(t, bytes.Equal(want, under.data.Bytes()), "bytes and order kept")
	idle, writing := c.idle(time.Time{})
	assert.False(t, writing)
	assert.Less(t, idle, time.Hour, "the last write's progress is recorded")
}

// A write that times out on the socket reports the deadline error, which the
// session counts as a stalled client.
func TestCorkConnReportsTimeouts(t *testing.T) {
	under := &countingConn{failWith: &net.OpError{Op: "write", Net: "tcp", Err: os.ErrDeadlineExceeded}}
	c := &corkConn{Conn: under}
	require.NoError(t, c.cork(time.Second))
	_, err := c.Write(make([]byte, corkLimit+1))
	assert.True(t, errors.Is(err, os.ErrDeadlineExceeded), "%v", err)
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
