package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/wshub/wshub"
)

// dialTimeout bounds one WebSocket handshake.
const dialTimeout = 15 * time.Second

// connect dials r.N stable clients, spread round-robin over r.URLs, and starts
// a reader for each.
func (cs *clientSet) connect(ctx context.Context, r request) (reply, error) {
	if len(r.URLs) == 0 || r.N <= 0 {
		return reply{}, errors.New("connect: no urls or no clients")
	}
	cs.mu.Lock()
	if cs.stable != nil {
		cs.mu.Unlock()
		return reply{}, errors.New("connect: already connected")
	}
	cs.configure(r)
	cs.stable = make([]*client, r.N)
	cs.mu.Unlock()

	start := time.Now()
	var failed tally
	cs.dialStable(ctx, r, &failed)
	rep := reply{Connected: r.N - int(failed.count()), DialNS: int64(time.Since(start))}
	if err := ctx.Err(); err != nil {
		return rep, err
	}
	if err := failed.firstErr(); err != nil {
		return rep, fmt.Errorf("connect: %d of %d clients failed, first: %w", failed.count(), r.N, err)
	}
	return rep, nil
}

// dialStable dials the stable clients of r, r.DialConc at a time, and
// starts each one's reader. It adds the clients that failed to failed.
func (cs *clientSet) dialStable(ctx context.Context, r request, failed *tally) {
	perAddr := max(r.PerAddr, 1)
	sem := make(chan struct{}, max(r.DialConc, 1))
	var wg sync.WaitGroup
	for i := 0; i < r.N && ctx.Err() == nil; i++ {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			conn, err := cs.dialRetry(ctx, r.AddrBase+i/perAddr, cs.clientURL(r, i))
			if err != nil {
				failed.add(err)
				return
			}
			c := cs.startReader(i, conn, false)
			cs.mu.Lock()
			cs.stable[i] = c
			cs.mu.Unlock()
		}()
	}
	wg.Wait()
}

// clientURL returns the URL of client i of r: its node's, round-robin, with
// its user.
func (cs *clientSet) clientURL(r request, i int) string {
	return r.URLs[i%len(r.URLs)] + "?user=" + r.Prefix + strconv.Itoa(i) + cs.query()
}

// query returns what the clients add to their URL's query: the batched
// framing's parameter, if asked for.
func (cs *clientSet) query() string {
	if cs.batch {
		return "&" + wshub.BatchParam + "=1"
	}
	return ""
}

// startReader starts the reader of conn, client idx, and returns it.
func (cs *clientSet) startReader(idx int, conn *websocket.Conn, churner bool) *client {
	c := &client{idx: idx, conn: conn, done: make(chan struct{})}
	cs.readers.Add(1)
	go cs.read(c, churner)
	return c
}

// httpClient returns the HTTP client whose connections leave from source
// address 127.0.0.(1+i). One source address gives about 28k ephemeral ports
// (per server port, with bindAddressNoPort), so a large run spreads over
// several.
func (cs *clientSet) httpClient(i int) *http.Client {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if c := cs.http[i]; c != nil {
		return c
	}
	if cs.http == nil {
		cs.http = make(map[int]*http.Client)
	}
	ip := net.IPv4(127, 0, 0, byte(1+i%254))
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}, Timeout: dialTimeout, Control: bindAddressNoPort}
	c := &http.Client{Transport: &http.Transport{
		DialContext:         d.DialContext,
		Proxy:               nil,
		MaxIdleConnsPerHost: -1,
		DisableCompression:  true,
	}}
	cs.http[i] = c
	return c
}

func (cs *clientSet) dial(ctx context.Context, addr int, url string) (*websocket.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: cs.httpClient(addr)})
	if err != nil {
		return nil, err
	}
	conn.SetReadLimit(-1) // the server is ours; -size may be anything
	return conn, nil
}

// dialRetry dials with a few retries: a burst of thousands of handshakes can
// overflow the listener's backlog.
func (cs *clientSet) dialRetry(ctx context.Context, addr int, url string) (*websocket.Conn, error) {
	var err error
	for attempt := 0; attempt < 4; attempt++ {
		if attempt > 0 && !sleepUntil(ctx, time.Now().Add(time.Duration(attempt)*200*time.Millisecond)) {
			return nil, ctx.Err()
		}
		var conn *websocket.Conn
		if conn, err = cs.dial(ctx, addr, url); err == nil {
			return conn, nil
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, err
}
