package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/coder/websocket"
)

// read is a connection's reader: it only reads each message, takes the
// arrival time and records the latency. It allocates nothing per message.
//
// In the batched framing it reads each message whole into buf, which it
// reuses and grows when a message is larger, and records every record of it
// as a delivery, with the latency of the stamp at the start of the record.
func (cs *clientSet) read(c *client, churner bool) {
	defer cs.readers.Done()
	defer close(c.done)
	buf := make([]byte, cs.bufSize)
	ctx := context.Background() // no per-read timer; closing the conn ends the read
	var hdr [stampLen]byte
	for {
		_, r, err := c.conn.Reader(ctx)
		if err != nil {
			cs.ended(c, churner, err)
			return
		}
		if cs.batch {
			if buf, err = readWhole(r, buf[:0]); err != nil {
				return
			}
			cs.records(c, churner, buf, time.Now().UnixNano()-cs.epoch)
			continue
		}
		hn, err := readStamp(r, buf, &hdr)
		if err != nil {
			return
		}
		cs.message(c, churner, hdr[:hn], time.Now().UnixNano()-cs.epoch)
	}
}

// ended notes that c's reader ended with err: a stable client that we did
// not close was closed by the server.
func (cs *clientSet) ended(c *client, churner bool, err error) {
	if c.closing.Load() || churner {
		return
	}
	cs.closedE.Add(1)
	if cs.closedE.Load() <= 3 {
		fmt.Fprintf(cs.log, "wshub-bench clients: client %d closed by the server: %v\n", c.idx, err)
	}
}

// readStamp reads the rest of the message r through buf, copies its first
// bytes, up to stampLen, into hdr and returns how many it copied.
func readStamp(r io.Reader, buf []byte, hdr *[stampLen]byte) (int, error) {
	hn := 0
	for {
		n, err := r.Read(buf)
		if hn < stampLen {
			hn += copy(hdr[hn:], buf[:n])
		}
		if err == io.EOF {
			return hn, nil
		}
		if err != nil {
			return hn, err
		}
	}
}

// readWhole appends the rest of the message r to buf, growing it (to twice
// its capacity at a time) when it is full, and returns it.
func readWhole(r io.Reader, buf []byte) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, max(cap(buf), 64))
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// message counts and observes a message of c, not batched, that starts with
// head and arrived at now.
func (cs *clientSet) message(c *client, churner bool, head []byte, now int64) {
	if churner {
		cs.churnRx.Add(1)
		return
	}
	c.count.Add(1)
	c.frames.Add(1)
	c.last.Store(now)
	cs.observe(c, head, now)
}

// records counts and observes the records of msg, a message of the batched
// framing that arrived at now. A message that ends in the middle of a
// record counts as one bad record from there on.
func (cs *clientSet) records(c *client, churner bool, msg []byte, now int64) {
	var n, bad int64
	for off := 0; off < len(msg); {
		typ, body, next, ok := nextRecord(msg, off)
		off = next
		if !ok {
			bad++
			break
		}
		n++
		if churner {
			continue
		}
		if typ != byte(websocket.MessageText) && typ != byte(websocket.MessageBinary) {
			bad++
			continue
		}
		cs.observe(c, body, now)
	}
	if bad > 0 {
		cs.bad.Add(bad)
	}
	if churner {
		cs.churnRx.Add(n)
		return
	}
	if n > 0 {
		c.count.Add(n)
		c.last.Store(now)
	}
	c.frames.Add(1)
}

// observe records the latency of a message of c that starts with p and
// arrived at now, or counts it as bad without a stamp.
func (cs *clientSet) observe(c *client, p []byte, now int64) {
	ts, ok := getStamp(p)
	if !ok {
		cs.bad.Add(1)
		return
	}
	lat := max(now-ts, 0)
	cs.hist.record(c.idx, lat)
	if lat > c.maxLat.Load() {
		c.maxLat.Store(lat)
	}
}

// drain waits until the stable clients have received r.Expect messages, or
// until nothing arrived for r.QuietNS, or r.DeadlineNS, and reports.
func (cs *clientSet) drain(ctx context.Context, r request) reply {
	cs.mu.Lock()
	clients := cs.stable
	cs.mu.Unlock()
	start := time.Now()
	waitDelivered(ctx, r, clients)
	var frames int64
	for _, c := range clients {
		if c != nil {
			frames += c.frames.Load()
		}
	}
	rep := reply{
		Delivered:      delivered(clients),
		Frames:         frames,
		ChurnDelivered: cs.churnRx.Load(),
		Bad:            cs.bad.Load(),
		ServerClosed:   int(cs.closedE.Load()),
		WaitedNS:       int64(time.Since(start)),
	}
	for _, c := range clients {
		if c != nil {
			rep.MaxNS = max(rep.MaxNS, c.maxLat.Load())
			rep.LastNS = max(rep.LastNS, c.last.Load())
		}
	}
	// A bucket's middle can lie past the largest value in it.
	q, _ := cs.hist.quantiles(0.50, 0.99)
	rep.P50NS, rep.P99NS = min(q[0], rep.MaxNS), min(q[1], rep.MaxNS)
	return rep
}

// waitDelivered waits until clients have received r.Expect messages, or
// until nothing arrived for r.QuietNS, or r.DeadlineNS, or the end of ctx.
func waitDelivered(ctx context.Context, r request, clients []*client) {
	deadline := time.Unix(0, r.DeadlineNS)
	quiet := time.Duration(r.QuietNS)
	var lastChange time.Time
	last := int64(-1) // no count yet: the first one is a change
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		n := delivered(clients)
		now := time.Now()
		if n >= r.Expect || ctx.Err() != nil || (r.DeadlineNS != 0 && now.After(deadline)) {
			return
		}
		if n != last {
			last, lastChange = n, now
		} else if now.Sub(lastChange) > quiet {
			return
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
		}
	}
}

// delivered returns the messages the clients have received.
func delivered(clients []*client) int64 {
	var n int64
	for _, c := range clients {
		if c != nil {
			n += c.count.Load()
		}
	}
	return n
}
