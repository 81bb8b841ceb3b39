package wshubtest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wshub/wshub"
)

// Client is a WebSocket client of a test, made by Cluster.Dial. It reads
// in the background from the moment it is dialled, so a hub never finds it
// slow. Its methods fail the test that dialled it (with Fatal, so call them
// from that test's goroutine) rather than wait longer than Timeout.
type Client struct {
	t    testing.TB
	conn *websocket.Conn

	mu    sync.Mutex
	queue []wshub.Message // read, not yet returned by Next
	more  chan struct{}   // signalled when queue grows
	done  chan struct{}   // closed when reading has stopped
	err   error           // why reading stopped, set before done is closed
}

// dial opens a connection to the WebSocket URL u, not reading yet.
func dial(t testing.TB, u string) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, u, nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("wshubtest: dial %s: HTTP status %d: %v", u, status, err)
	}
	conn.SetReadLimit(-1)
	c := &Client{t: t, conn: conn, more: make(chan struct{}, 1), done: make(chan struct{})}
	t.Cleanup(func() { _ = conn.CloseNow() })
	return c
}

// startReading starts the goroutine that reads into the queue; the test's
// cleanup ends it.
func (c *Client) startReading() {
	go func() {
		defer close(c.done)
		for {
			typ, data, err := c.conn.Read(context.Background())
			if err != nil {
				c.err = err
				return
			}
			c.mu.Lock()
			c.queue = append(c.queue, wshub.Message{Type: wshub.MessageType(typ), Data: data})
			c.mu.Unlock()
			select {
			case c.more <- struct{}{}:
			default:
			}
		}
	}()
	c.t.Cleanup(func() { _ = c.conn.CloseNow(); <-c.done })
}

// pop returns the oldest unread message, if any.
func (c *Client) pop() (wshub.Message, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.queue) == 0 {
		return wshub.Message{}, false
	}
	m := c.queue[0]
	c.queue[0] = wshub.Message{}
	c.queue = c.queue[1:]
	return m, true
}

// Next returns the next message the hub sent, in order. It fails the test
// when none comes within Timeout, or when the connection ends first.
func (c *Client) Next() wshub.Message {
	c.t.Helper()
	timer := time.NewTimer(Timeout)
	defer timer.Stop()
	for {
		if m, ok := c.pop(); ok {
			return m
		}
		select {
		case <-c.more:
		case <-c.done:
			if m, ok := c.pop(); ok {
				return m
			}
			c.t.Fatalf("wshubtest: the connection ended while waiting for a message: %v", c.err)
			return wshub.Message{}
		case <-timer.C:
			c.t.Fatalf("wshubtest: no message within %v", Timeout)
			return wshub.Message{}
		}
	}
}

// NextText returns the data of the next message, which must be a text
// message.
func (c *Client) NextText() string {
	c.t.Helper()
	m := c.Next()
	if m.Type != wshub.MessageText {
		c.t.Fatalf("wshubtest: got a %v message %q, want text", m.Type, m.Data)
	}
	return string(m.Data)
}

// Send sends m to the hub, as the browser would: the hub hands it to
// Options.OnMessage. It fails the test when the write fails.
func (c *Client) Send(m wshub.Message) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageType(m.Type), m.Data); err != nil {
		c.t.Fatalf("wshubtest: send: %v", err)
	}
}

// Closed waits until the hub ends the connection and returns the status
// code of its close frame, or -1 when it ended without one. Messages that
// arrived before the close can still be read with Next. It fails the test
// when the connection is still open after Timeout.
func (c *Client) Closed() wshub.StatusCode {
	c.t.Helper()
	select {
	case <-c.done:
		return wshub.CloseStatus(c.err)
	case <-time.After(Timeout):
		c.t.Fatalf("wshubtest: the connection is still open after %v", Timeout)
		return -1
	}
}

// Close closes the connection from the client's side with status 1000
// (normal closure), as a user leaving the page, and waits for the close
// handshake.
func (c *Client) Close() {
	c.t.Helper()
	_ = c.conn.Close(websocket.StatusNormalClosure, "")
	c.Closed()
}
