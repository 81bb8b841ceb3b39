package main

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The listener holds at most n connections: the next is accepted only once
// one closes, and Close releases an Accept that waits.
func TestLimitListener(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ln := limitListener(inner, 2)
	accepted := make(chan net.Conn, 3)
	acceptErr := make(chan error, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				acceptErr <- err
				return
			}
			accepted <- c
		}
	}()
	var clients []net.Conn
	for i := 0; i < 3; i++ {
		c, err := net.Dial("tcp", inner.Addr().String()) // the kernel's backlog takes the third
		require.NoError(t, err)
		clients = append(clients, c)
		defer c.Close()
	}
	first, second := <-accepted, <-accepted
	select {
	case <-accepted:
		t.Fatal("a third connection was accepted while two were open")
	case <-time.After(100 * time.Millisecond): // what is asserted is that it waits, not for how long
	}
	require.NoError(t, first.Close())
	third := <-accepted
	require.NoError(t, second.Close())
	require.NoError(t, third.Close())
	require.NoError(t, ln.Close())
	require.True(t, errors.Is(<-acceptErr, net.ErrClosed))
}

// A client that sends half an upgrade request and waits is cut off by
// the server's ReadHeaderTimeout instead of holding a goroutine for ever.
func TestHalfSentRequestIsCutOff(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := newHTTPServer(http.NotFoundHandler(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Write([]byte("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")) // and nothing more
	require.NoError(t, err)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(3*srv.ReadHeaderTimeout))) // a guard, not the assertion
	_, err = io.ReadAll(c)
	require.NoError(t, err, "the server closed the connection (EOF), rather than the guard firing")
}
