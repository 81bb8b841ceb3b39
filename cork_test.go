package wshub

import (
	"bytes"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// countingConn records the writes that reach the socket.
type countingConn struct {
	net.Conn
	mu     sync.Mutex
	writes int
	data   bytes.Buffer
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes++
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
