package wshub

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// corkLimit is how many bytes a corked connection holds before it writes
// them out anyway.
const corkLimit = 64 << 10

// writeChunk is the most a corkConn hands the socket in one write. Go's
// write deadline covers a whole Write, so the deadline is renewed after each
// piece: it bounds a stall, not the time a slow but steady peer takes to
// read a large batch.
const writeChunk = 16 << 10

// corkConn is the socket under a session's WebSocket. While its writer drains
// a batch of queued messages the connection is corked: the websocket library
// flushes after every message, and those flushes only append to a buffer;
// uncork writes the batch with one system call per writeChunk, each bounded
// by the write deadline. Frames the library writes meanwhile (pongs, close)
// keep their order and go out with the batch.
type corkConn struct {
	net.Conn

	mu      sync.Mutex
	corked  bool
	buf     []byte
	timeout time.Duration // each real write may make no progress for this long; 0 before the first arm
	// deadline is the socket's write deadline. It is set lazily: a write
	// moves it only when less than timeout is left, to timeout+timeout/4
	// from now, so that a stalled write fails after between timeout and
	// 1.25 × timeout while a busy socket sets it once per timeout/4 rather
	// than twice per batch (each set is a timer update in the runtime).
	deadline time.Time

	// lastWrite is when the socket last took bytes, in Unix nanoseconds,
	// and writing is set while a write to it is in progress. A ping
	// waiting for its pong reads them without mu, which a blocked write
	// holds (see Session.pingAndWait).
	lastWrite atomic.Int64
	writing   atomic.Bool
}

func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.corked {
		// Frames the library writes on its own (pongs, close) and the
		// messages of a one-message batch, which need no corking.
		return c.sendLocked(p)
	}
	if len(c.buf)+len(p) > corkLimit {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		if len(p) > corkLimit {
			return c.sendLocked(p)
		}
	}
	c.buf = append(c.buf, p...)
	return len(p), nil
}

// sendLocked writes p to the socket in pieces of at most writeChunk bytes.
// Before each piece it makes sure the write deadline leaves a full timeout,
// so that a write fails only when the socket took nothing of a piece for
// between timeout and 1.25 × timeout.
func (c *corkConn) sendLocked(p []byte) (int, error) {
	c.writing.Store(true)
	defer c.writing.Store(false)
	n, now := 0, time.Now()
	for len(p) > 0 {
		if err := c.armLocked(now); err != nil {
			return n, err
		}
		k, err := c.Conn.Write(p[:min(len(p), writeChunk)])
		now = time.Now()
		if k > 0 {
			c.lastWrite.Store(now.UnixNano())
		}
		n += k
		p = p[k:]
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// idle reports how long ago the socket last took bytes (since, at the
// latest) and whether a write to it is in progress, which the write
// deadline bounds.
func (c *corkConn) idle(since time.Time) (time.Duration, bool) {
	last := time.Unix(0, c.lastWrite.Load())
	if last.Before(since) {
		last = since
	}
	return time.Since(last), c.writing.Load()
}

// setWriteBuffer sets the kernel send buffer of the TCP socket under c to n
// bytes, when n > 0 and c is over TCP, found through wrappers that expose
// their connection with NetConn (as crypto/tls does).
func (c *corkConn) setWriteBuffer(n int) error {
	if n <= 0 {
		return nil
	}
	nc := c.Conn
	for i := 0; i < 8; i++ {
		switch t := nc.(type) {
		case *net.TCPConn:
			return t.SetWriteBuffer(n)
		case interface{ NetConn() net.Conn }:
			nc = t.NetConn()
		default:
			return nil
		}
	}
	return nil
}

// armLocked makes sure the socket's write deadline leaves at least
// c.timeout from now (none before the first arm).
func (c *corkConn) armLocked(now time.Time) error {
	if c.timeout <= 0 {
		return nil
	}
	if !c.deadline.IsZero() && c.deadline.Sub(now) >= c.timeout {
		return nil
	}
	d := now.Add(c.timeout + c.timeout/4)
	if err := c.Conn.SetWriteDeadline(d); err != nil {
		return err
	}
	c.deadline = d
	return nil
}

// arm bounds the writes that follow, uncorked, by timeout without
// progress.
func (c *corkConn) arm(timeout time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.timeout = timeout
	return c.armLocked(time.Now())
}

// cork starts buffering writes; until uncork, each real write must make
// progress within timeout (see deadline).
func (c *corkConn) cork(timeout time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked, c.timeout = true, timeout
	return c.armLocked(time.Now())
}

// uncork writes what was buffered and stops buffering. The write deadline
// stays: every later write refreshes it before it could get in the way.
func (c *corkConn) uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	err := c.flushLocked()
	if cap(c.buf) > corkLimit*2 {
		c.buf = nil
	}
	return err
}

// closeFlushWait bounds the last write Close makes of what is still
// corked, typically the close frame the library wrote in answer to the
// peer's; it only matters for a peer that stopped reading.
const closeFlushWait = 100 * time.Millisecond

// Close writes what is still buffered, best effort, then closes the socket.
// When a write is blocked on the socket (the peer stopped reading), it closes
// at once, which ends that write.
func (c *corkConn) Close() error {
	if c.mu.TryLock() {
		if len(c.buf) > 0 {
			// No timeout: the flush must not move the deadline.
			c.corked, c.timeout = false, 0
			_ = c.Conn.SetWriteDeadline(time.Now().Add(closeFlushWait))
			_ = c.flushLocked()
		}
		c.corked = false
		c.mu.Unlock()
	}
	return c.Conn.Close()
}

func (c *corkConn) flushLocked() error {
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.sendLocked(c.buf)
	c.buf = c.buf[:0]
	return err
}
