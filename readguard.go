package wshub

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// readGuard is what a session's WebSocket reads the client through: it sits
// between the hijacked socket and the websocket library's bufio.Reader, finds
// the frames in the byte stream and charges them to the session's token
// buckets (Limits.FramesPerSecond and BytesPerSecond). Every frame counts,
// data, continuation and control alike, whether or not it ever makes a
// message: the library answers pings and swallows empty continuation frames
// on its own, where nothing above it could see them. Each read is charged
// one frame token for each frame that begins in it and one byte token for
// each of its bytes, headers included; a read takes at most FrameBurst
// smallest frames' worth of bytes and at most ByteBurst bytes, so that one
// read never holds more than a burst.
//
// Under RateDelay a read that finds the buckets short waits for them to
// refill before it hands its bytes on, so that the socket is not read and TCP
// slows the client down; each wait counts in Stats.RateDelayed. Under
// RateClose the first read past the limits closes the session with 1008
// (counted in Stats.RateClosed), and until that close frame goes out further
// reads are delayed instead, so a flooder cannot flood while its session
// drains its queue. Once the session sends its close frame, or its connection
// or context ends, reads no longer wait, so that the client's answer to the
// close is read promptly; what the client sends is still charged, and from a
// client that goes on flooding past its buckets nothing more is read (the
// websocket library would otherwise read and drop a line-speed flood until
// its close handshake times out).
//
// Only the session's reader calls Read (the library serializes its reads),
// so the guard's state needs no lock; stop may be called from anywhere.
type readGuard struct {
	conn io.Reader // the socket
	// pre holds the bytes the HTTP server had read past the upgrade
	// request (frames a client sent without waiting for the handshake's
	// answer): they are read first, and charged like the rest.
	pre []byte

	frames, bytes *rate.Limiter // nil when that bucket is off
	policy        RatePolicy
	maxRead       int // the most one read takes (0: no bound), so that a read never holds more than a burst

	done     <-chan struct{} // closed once the guard stops limiting
	stop     context.CancelFunc
	delayed  func() // a read waited (RateDelay)
	exceeded func() // the client went past its limits (RateClose)

	off     bool // both buckets are off: never limits
	closing bool // the session sent its close frame (or ended): no more waits
	stalled bool // flooded after the close frame: read nothing more
	// gone is closed with the connection; a stalled read waits for it.
	gone     chan struct{}
	goneOnce sync.Once
	draining bool // exceeded under RateClose: delay, uncounted, until stopped
	timer    *time.Timer
	scan     frameScanner
}

// minClientFrame is the size of the smallest frame a client may send: two
// bytes of header and a masking key. A read of n times that holds at most n
// frames.
const minClientFrame = 6

// newReadGuard returns a guard that limits what is read from a session's
// client by l, until ctx ends or stop is called. delayed and exceeded are
// called on the reader's goroutine.
func newReadGuard(ctx context.Context, l Limits, delayed, exceeded func()) *readGuard {
	g := &readGuard{policy: l.RatePolicy, delayed: delayed, exceeded: exceeded, gone: make(chan struct{})}
	ctx, g.stop = context.WithCancel(ctx)
	g.done = ctx.Done()
	if l.FramesPerSecond > 0 && l.FrameBurst > 0 {
		g.frames = rate.NewLimiter(rate.Limit(l.FramesPerSecond), l.FrameBurst)
		g.maxRead = minClientFrame * l.FrameBurst
	}
	if l.BytesPerSecond > 0 && l.ByteBurst > 0 {
		g.bytes = rate.NewLimiter(rate.Limit(l.BytesPerSecond), l.ByteBurst)
		if g.maxRead == 0 || l.ByteBurst < g.maxRead {
			g.maxRead = l.ByteBurst
		}
	}
	g.off = g.frames == nil && g.bytes == nil
	return g
}

// attach makes the guard read from conn, starting with what br, the HTTP
// server's reader of conn, has buffered, and resets br to read through the
// guard. The websocket library takes what br has buffered at the hijack
// straight to its own reader, past the guard: attach hands it over first.
func (g *readGuard) attach(br *bufio.Reader, conn io.Reader) {
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		g.pre = bytes.Clone(b)
	}
	g.conn = conn
	br.Reset(g)
}

// Read reads from the client and charges what it read to the buckets,
// waiting for them under RateDelay.
func (g *readGuard) Read(p []byte) (int, error) {
	if g.stalled {
		<-g.gone
		return 0, net.ErrClosed
	}
	if !g.off && g.maxRead > 0 && len(p) > g.maxRead {
		p = p[:g.maxRead]
	}
	if len(g.pre) > 0 {
		n := copy(p, g.pre)
		g.pre = g.pre[n:]
		if len(g.pre) == 0 {
			g.pre = nil
		}
		g.charge(p[:n])
		return n, nil
	}
	n, err := g.conn.Read(p)
	if n > 0 {
		g.charge(p[:n])
	}
	return n, err
}

// charge counts the frames that begin in b and charges them and b's bytes to
// the buckets, then applies the policy.
func (g *readGuard) charge(b []byte) {
	if g.off {
		return
	}
	if !g.closing {
		select {
		case <-g.done:
			g.closing = true
		default:
		}
	}
	frames, now := g.scan.scan(b), time.Now()
	if g.closing {
		// After the close frame nothing waits, so the client's answer is
		// read promptly; but what the client sends is still charged, and
		// one that goes on flooding past its buckets is read no more: TCP
		// stops it, the close frame stays readable for it, and the
		// connection ends when the close handshake times out.
		if !allow(g.frames, now, frames) || !allow(g.bytes, now, len(b)) {
			g.stalled = true
		}
		return
	}
	if g.policy == RateClose && !g.draining {
		if allow(g.frames, now, frames) && allow(g.bytes, now, len(b)) {
			return
		}
		g.draining = true
		g.exceeded()
		return
	}
	d := max(reserve(g.frames, now, frames), reserve(g.bytes, now, len(b)))
	if d <= 0 {
		return
	}
	if !g.draining {
		g.delayed()
	}
	if g.timer == nil {
		g.timer = time.NewTimer(d)
	} else {
		g.timer.Reset(d)
	}
	select {
	case <-g.timer.C:
	case <-g.done:
		g.timer.Stop()
		g.closing = true
	}
}

// closed tells the guard its connection is closed.
func (g *readGuard) closed() {
	g.goneOnce.Do(func() { close(g.gone) })
	g.stop()
}

// newReadGuard returns the guard of s's reads, by the hub's Limits, for
// the life of s.
func (s *Session) newReadGuard() *readGuard {
	s.guard = newReadGuard(s.ctx, s.hub.opts.Limits,
		func() { s.hub.stats.rateDelayed.Add(1) },
		s.rateExceeded)
	return s.guard
}

// rateExceeded closes s, whose client sent faster than its limits allow
// under RateClose, with 1008.
func (s *Session) rateExceeded() {
	if s.violate(ErrRateLimit, StatusPolicyViolation, "rate limit exceeded") {
		s.hub.stats.rateClosed.Add(1)
	}
}

// violate stops handing what s's client sends to OnMessage and closes s with
// code and reason, after what it has queued, unless s is already closing;
// err then says why in what OnDisconnect receives. It reports whether it
// closed s.
func (s *Session) violate(err error, code StatusCode, reason string) bool {
	s.violated.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.violation = err
	s.startCloseLocked(code, reason)
	return true
}

// onPing tells the websocket library whether to answer a ping: yes, until
// the session sends its close frame (or ends), after which nothing may follow
// it (RFC 6455, section 5.5.1). The library would fail the read whose pong
// it cannot write, cutting the connection before the client's answer to the
// close, which a flooder's pings were still ahead of, is read.
func (s *Session) onPing(context.Context, []byte) bool {
	return !s.guard.stopped()
}

// stopped reports whether the guard has stopped limiting: its session sent
// its close frame, or its connection or context ended.
func (g *readGuard) stopped() bool {
	select {
	case <-g.done:
		return true
	default:
		return false
	}
}

// allow reports whether l, if on, has n tokens now, and takes them if so.
func allow(l *rate.Limiter, now time.Time, n int) bool {
	return l == nil || n == 0 || n <= l.Burst() && l.AllowN(now, n)
}

// reserve takes n tokens from l, if on, and returns how long to wait until
// they are there. Tokens are taken in pieces of at most the burst, which
// rate.Limiter never grants at once, so that one read of many small frames is
// charged in full.
func reserve(l *rate.Limiter, now time.Time, n int) time.Duration {
	if l == nil || n == 0 {
		return 0
	}
	burst := l.Burst()
	var d time.Duration
	for n > 0 {
		k := min(n, burst)
		n -= k
		if l.AllowN(now, k) {
			continue // the common case, without a Reservation
		}
		d = l.ReserveN(now, k).DelayFrom(now)
	}
	return d
}

// frameScanner follows the frame structure of a client's byte stream (RFC
// 6455, section 5.2) without keeping any of it: it reads each header, two
// bytes, an extended length of two or eight and a four-byte masking key, and
// skips the payload. Its state is a few integers, whatever the stream.
type frameScanner struct {
	left uint64 // payload bytes of the current frame still to come
	plen uint64 // the payload length, while its header is read
	pos  uint8  // header bytes read of the current frame; 0 between frames
	size uint8  // the header's length, known from its second byte
	ext  uint8  // bytes of extended payload length
}

// scan moves the scanner over b and returns how many frames begin in it.
func (f *frameScanner) scan(b []byte) (frames int) {
	for len(b) > 0 {
		if f.left > 0 {
			k := min(uint64(len(b)), f.left)
			b = b[k:]
			f.left -= k
			continue
		}
		c := b[0]
		b = b[1:]
		switch {
		case f.pos == 0:
			frames++
		case f.pos == 1:
			switch n := c & 0x7f; n {
			case 126:
				f.ext = 2
			case 127:
				f.ext = 8
			default:
				f.ext, f.plen = 0, uint64(n)
			}
			f.size = 2 + f.ext
			if c&0x80 != 0 {
				f.size += 4 // the masking key
			}
		case f.pos < 2+f.ext:
			f.plen = f.plen<<8 | uint64(c)
		}
		f.pos++
		if f.pos >= 2 && f.pos == f.size {
			f.left, f.plen, f.pos = f.plen, 0, 0
		}
	}
	return frames
}

// guardedConn is the hijacked connection as the websocket library sees it:
// it reads through the session's readGuard and writes through its corkConn.
// Closing it stops the guard, so that a read waiting for tokens ends with
// the connection.
type guardedConn struct {
	*corkConn
	g *readGuard
}

func (c guardedConn) Read(p []byte) (int, error) { return c.g.Read(p) }

func (c guardedConn) Close() error {
	c.g.closed()
	return c.corkConn.Close()
}

var _ net.Conn = guardedConn{}
