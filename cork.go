package wshub

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"
)

// corkLimit is how many bytes a corked connection holds before it writes
// them out anyway.
const corkLimit = 64 << 10

// corkConn is the socket under a session's WebSocket. While its writer drains
// a batch of queued messages the connection is corked: the websocket library
// flushes after every message, and those flushes only append to a buffer;
// uncork writes the batch in one system call, bounded by one write deadline.
// Frames the library writes meanwhile (pongs, close) keep their order and go
// out with the batch.
type corkConn struct {
	net.Conn

	mu     sync.Mutex
	corked bool
	buf    []byte
}

func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.corked {
		return c.Conn.Write(p)
	}
	if len(c.buf)+len(p) > corkLimit {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		if len(p) > corkLimit {
			return c.Conn.Write(p)
		}
	}
	c.buf = append(c.buf, p...)
	return len(p), nil
}

// cork starts buffering writes; every real write until uncork must finish
// before deadline.
func (c *corkConn) cork(deadline time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = true
	return c.Conn.SetWriteDeadline(deadline)
}

// uncork writes what was buffered and stops buffering.
func (c *corkConn) uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	err := c.flushLocked()
	if derr := c.Conn.SetWriteDeadline(time.Time{}); err == nil && derr != nil && !errors.Is(derr, net.ErrClosed) {
		err = derr
	}
	if cap(c.buf) > corkLimit*2 {
		c.buf = nil
	}
	return err
}

func (c *corkConn) flushLocked() error {
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.buf)
	c.buf = c.buf[:0]
	return err
}

// corkingWriter wraps the ResponseWriter handed to websocket.Accept so that
// the hijacked connection, which the library writes to, is a corkConn.
type corkingWriter struct {
	http.ResponseWriter
	conn *corkConn
}

// Hijack implements http.Hijacker.
func (w *corkingWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := w.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("wshub: http.ResponseWriter does not implement http.Hijacker")
	}
	nc, brw, err := hj.Hijack()
	if err != nil {
		return nil, nil, err
	}
	w.conn = &corkConn{Conn: nc}
	brw.Writer.Reset(w.conn)
	return w.conn, brw, nil
}

// Unwrap returns the wrapped ResponseWriter, for http.ResponseController.
func (w *corkingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
