package wshub

import (
	"net"
	"sync"
	"sync/atomic"
	"syscall"
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

// libWriteBuffer is the size of the bufio.Writer the websocket library
// writes its frames into: what it writes itself are control frames (pongs,
// pings, close) of at most 127 bytes, so each reaches the corkConn whole.
// The hub's data frames never go through it.
const libWriteBuffer = 128

// throughIdle is how long a socket must have taken nothing before the
// fan-out writes to it itself (see corkConn.writeThrough): a session that
// is written to more often than that goes through its writer, which packs
// what queues meanwhile into few writes.
const throughIdle = 5 * time.Millisecond

// clockStart is the origin of mono.
var clockStart = time.Now()

// mono returns the monotonic time since clockStart, in nanoseconds.
func mono() int64 { return int64(time.Since(clockStart)) }

// writeBufs are the buffers of corked batches and of frames put together
// for one write, taken only while writing, in three sizes: a writer stuck
// on a socket holds one, so it should be no larger than its batch.
var writeBufs = [3]sync.Pool{
	{New: func() any { b := make([]byte, 0, 4<<10); return &b }},
	{New: func() any { b := make([]byte, 0, 16<<10); return &b }},
	{New: func() any { b := make([]byte, 0, corkLimit); return &b }},
}

// getWriteBuf returns an empty buffer for about n bytes.
func getWriteBuf(n int) *[]byte {
	switch {
	case n <= 4<<10:
		return writeBufs[0].Get().(*[]byte)
	case n <= 16<<10:
		return writeBufs[1].Get().(*[]byte)
	default:
		return writeBufs[2].Get().(*[]byte)
	}
}

// putWriteBuf hands b back to the pool of its size.
func putWriteBuf(b *[]byte) {
	*b = (*b)[:0]
	switch c := cap(*b); {
	case c > 2*corkLimit:
	case c >= corkLimit:
		writeBufs[2].Put(b)
	case c >= 16<<10:
		writeBufs[1].Put(b)
	case c >= 4<<10:
		writeBufs[0].Put(b)
	}
}

// corkConn is the socket under a session's WebSocket, and every byte written
// to it goes through it, whole frame by whole frame: the hub's data frames
// (send, and writeThrough for the fan-out) and the websocket library's own
// frames (Write), which it finds in what the library writes (libFrames).
// While the session's writer drains a batch of queued messages the
// connection is corked: frames are appended to a buffer, and uncork writes
// the batch with one system call per writeChunk, each bounded by the write
// deadline. Frames the library writes meanwhile keep their order and go out
// with the batch. When the fan-out wrote part of a data frame, its rest is
// kept here and goes first, before any other frame, the library's included.
type corkConn struct {
	net.Conn
	// raw is the socket's file descriptor, for writeThrough; nil when the
	// connection is not a TCP socket (TLS, say).
	raw syscall.RawConn

	mu      sync.Mutex
	corked  bool
	buf     []byte    // the corked batch, from writeBufs while corked
	bufp    *[]byte   // buf's pool entry
	lib     libFrames // the library's frames, whole
	rest    []byte    // what the socket did not take of a frame writeThrough began
	closed  bool      // the library wrote its close frame: no data frame may follow
	hdr     [maxFrameHeader]byte
	timeout time.Duration // each real write may make no progress for this long; 0 before the first arm
	// deadline is the socket's write deadline. It is set lazily: a write
	// moves it only when less than timeout is left, to timeout+timeout/4
	// from now, so that a stalled write fails after between timeout and
	// 1.25 × timeout while a busy socket sets it once per timeout/4 rather
	// than twice per batch (each set is a timer update in the runtime).
	deadline time.Time

	// The state of a write straight to the descriptor (see rawWrite).
	rawFn  func(fd uintptr)
	rawP   []byte
	rawN   int
	rawErr error

	// lastWrite is when the socket last took bytes (mono), and writing is
	// set while a write to it is in progress. A ping waiting for its pong
	// reads them without mu, which a blocked write holds (see
	// Session.pingAndWait); the fan-out reads lastWrite to tell an idle
	// socket.
	lastWrite atomic.Int64
	writing   atomic.Bool
}

// newCorkConn returns the corkConn over nc.
func newCorkConn(nc net.Conn) *corkConn {
	c := &corkConn{Conn: nc}
	c.raw = rawSocket(nc)
	return c
}

// Write takes what the websocket library writes: its control frames. Each
// goes out whole, after any data frame in progress.
func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		var f []byte
		if f, p = c.lib.next(p); f == nil {
			break // the rest of a frame is still to come
		}
		if err := c.libFrameLocked(f); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// libFrameLocked writes one whole frame of the library's, after the rest
// of a data frame begun, if any.
func (c *corkConn) libFrameLocked(f []byte) error {
	if err := c.finishLocked(); err != nil {
		return err
	}
	if f[0]&0x0f == opClose {
		// No data frame may follow the close frame. What is corked and
		// not yet sent would have to go before it: drop it (the writer
		// drains the queue before a close the hub begins, so only a
		// close the peer began, or one for a slow client, meets a
		// batch), and send the close at once rather than behind the
		// batch, so that Close, which the library calls right after,
		// cannot cut it off.
		c.closed = true
		c.buf = c.buf[:0]
		_, err := c.sendLocked(f)
		return err
	}
	return c.putLocked(nil, f)
}

// finishLocked writes the rest of a data frame writeThrough began, if any.
func (c *corkConn) finishLocked() error {
	if c.rest == nil {
		return nil
	}
	rest := c.rest
	c.rest = nil
	return c.putLocked(nil, rest)
}

// send writes m, one data frame, whole, or for a restMsg the rest of the
// frame writeThrough began: into the batch when corked, to the socket
// otherwise. A text or binary message is framed here. It fails with
// net.ErrClosed once the library has sent its close frame.
func (c *corkConn) send(m *outMsg) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.finishLocked(); err != nil || m.typ == restMsg {
		return err
	}
	if c.closed {
		return net.ErrClosed
	}
	if m.typ == frameMsg {
		return c.putLocked(nil, m.data)
	}
	hdr := appendFrameHeader(c.hdr[:0], m.typ, len(m.data))
	if c.corked || len(m.data) > writeChunk {
		return c.putLocked(hdr, m.data)
	}
	// One frame, one write.
	bp := getWriteBuf(len(hdr) + len(m.data))
	b := append(append((*bp)[:0], hdr...), m.data...)
	_, err := c.sendLocked(b)
	*bp = b
	putWriteBuf(bp)
	return err
}

// putLocked writes hdr and then data, which together are whole frames:
// into the batch when corked, to the socket otherwise.
func (c *corkConn) putLocked(hdr, data []byte) error {
	n := len(hdr) + len(data)
	if n == 0 {
		return nil
	}
	if c.corked {
		if len(c.buf)+n <= corkLimit {
			c.buf = append(append(c.buf, hdr...), data...)
			return nil
		}
		if err := c.flushLocked(); err != nil {
			return err
		}
		if n <= corkLimit {
			c.buf = append(append(c.buf, hdr...), data...)
			return nil
		}
	}
	if len(hdr) > 0 {
		if _, err := c.sendLocked(hdr); err != nil {
			return err
		}
	}
	_, err := c.sendLocked(data)
	return err
}

// writeThrough makes one attempt to write the data frame m straight to the
// socket, without waiting for it: for the fan-out, when the session has
// nothing queued and no writer. It reports false, having written nothing,
// when it cannot try (the socket is busy, corked, closed, or not a TCP
// socket) or the socket took nothing (it would block, or failed: the writer
// finds out). When the socket took part of the frame, partial is set: the
// rest is kept, to go before anything else, and the session's writer must
// finish it (a restMsg), unless a frame of the library's comes first and
// takes it along.
func (c *corkConn) writeThrough(m *outMsg) (ok, partial bool) {
	if c.raw == nil || m.typ == restMsg || !c.mu.TryLock() {
		return false, false
	}
	defer c.mu.Unlock()
	if c.corked || c.rest != nil || c.closed {
		return false, false
	}
	p, bp := m.data, (*[]byte)(nil)
	if m.typ != frameMsg {
		if len(m.data) > writeChunk {
			return false, false
		}
		bp = getWriteBuf(maxFrameHeader + len(m.data))
		p = append(appendFrameHeader((*bp)[:0], m.typ, len(m.data)), m.data...)
		*bp = p
		defer putWriteBuf(bp)
	}
	n := c.rawWrite(p)
	switch {
	case n == len(p):
		return true, false
	case n == 0:
		return false, false
	}
	c.rest = p[n:]
	if bp != nil {
		c.rest = append([]byte(nil), c.rest...)
	}
	return true, true
}

// rawWrite makes one write of p to the socket's descriptor, which does not
// wait (the descriptor is non-blocking) and, unlike net.Conn.Write, ignores
// the write deadline, and returns how many bytes it took. Only the holder
// of mu writes to the socket, so the descriptor's own write lock is not
// needed.
func (c *corkConn) rawWrite(p []byte) int {
	if c.rawFn == nil {
		c.rawFn = func(fd uintptr) { c.rawN, c.rawErr = writeFD(fd, c.rawP) }
	}
	c.rawP = p
	err := c.raw.Control(c.rawFn)
	n := c.rawN
	c.rawP, c.rawN, c.rawErr = nil, 0, nil
	if err != nil || n <= 0 {
		return 0
	}
	c.lastWrite.Store(mono())
	return n
}

// idleSince reports whether the socket has taken nothing for idle
// nanoseconds before now (mono).
func (c *corkConn) idleSince(now, idle int64) bool {
	return now-c.lastWrite.Load() >= idle
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
			c.lastWrite.Store(int64(now.Sub(clockStart)))
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
	last := clockStart.Add(time.Duration(c.lastWrite.Load()))
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

// cork starts buffering writes, of about n bytes; until uncork, each real
// write must make progress within timeout (see deadline).
func (c *corkConn) cork(timeout time.Duration, n int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked, c.timeout = true, timeout
	if c.bufp == nil {
		c.bufp = getWriteBuf(min(n, corkLimit))
		c.buf = (*c.bufp)[:0]
	}
	return c.armLocked(time.Now())
}

// uncork writes what was buffered and stops buffering. The write deadline
// stays: every later write refreshes it before it could get in the way.
func (c *corkConn) uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	err := c.flushLocked()
	c.releaseBufLocked()
	return err
}

// releaseBufLocked hands the batch's buffer back to the pool.
func (c *corkConn) releaseBufLocked() {
	if c.bufp != nil {
		*c.bufp = c.buf
		putWriteBuf(c.bufp)
		c.buf, c.bufp = nil, nil
	}
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
		if c.rest != nil || len(c.buf) > 0 {
			// No timeout: the flush must not move the deadline.
			c.corked, c.timeout = false, 0
			_ = c.Conn.SetWriteDeadline(time.Now().Add(closeFlushWait))
			if c.finishLocked() == nil {
				_ = c.flushLocked()
			}
		}
		c.corked = false
		c.releaseBufLocked()
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
