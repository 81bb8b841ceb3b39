package main

import (
	"context"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// traffic is what a scenario publishes once its clients are connected:
// -msgs payloads of -size bytes, each stamped with its send time.
type traffic struct {
	send    func(ctx context.Context, p []byte) error // publishes one payload
	expect  int64                                     // deliveries to the stable clients
	rate    float64                                   // messages per second in all; 0 is flat out
	callers int                                       // goroutines calling send
}

// delivery is what the traffic phase measured.
type delivery struct {
	expect int64
	pub    pubStats
	drain  reply
	// the traffic phase's CPU time
	serverCPU, clientCPU, redisCPU time.Duration
	serverWrites                   int64
}

// traffic runs the traffic phase and returns the run's result.
func (e *env) traffic(ctx context.Context, t traffic) (result, error) {
	d, err := e.drive(ctx, t)
	if err != nil {
		return result{}, err
	}
	return e.finish(ctx, d)
}

// drive publishes t, waits until the stable clients have received what
// they expect or nothing arrived for -drain, and logs what that cost both
// processes.
func (e *env) drive(ctx context.Context, t traffic) (delivery, error) {
	rc := newRedisCPU(e.cfg.backplane)
	defer rc.close()
	redis0 := rc.read(ctx)
	cpu0, clientCPU0, writes0 := cpuTime(), e.clientCPU, writeCalls()
	pub := e.publish(ctx, t)
	e.logf("published %d of %d messages in %v (%.0f/s), %d failed%s",
		pub.sent, e.cfg.msgs, pub.elapsed.Round(time.Millisecond),
		float64(pub.sent)/max(pub.elapsed.Seconds(), 1e-9), pub.failed, pub.firstErr)

	dl, _ := ctx.Deadline()
	dr, err := e.call(request{Op: opDrain, Expect: t.expect, QuietNS: int64(e.cfg.drain), DeadlineNS: dl.UnixNano()})
	if err != nil {
		return delivery{}, err
	}
	e.logf("drain: %d of %d delivered after %v more; %d messages without a stamp; %d clients closed by the server",
		dr.Delivered, t.expect, time.Duration(dr.WaitedNS).Round(time.Millisecond), dr.Bad, dr.ServerClosed)
	if e.res.Batch {
		e.logf("batch: %d records in %d WebSocket messages (%.2f records per message)",
			dr.Delivered, dr.Frames, float64(dr.Delivered)/max(float64(dr.Frames), 1))
	}
	wall := time.Since(pub.start)
	srvCPU, cliCPU, writes := cpuTime()-cpu0, time.Duration(dr.CPUNS-clientCPU0), writeCalls()-writes0
	var redisCPU time.Duration
	if rc != nil {
		redisCPU = rc.read(ctx) - redis0
		e.logf("redis cpu %v", redisCPU.Round(time.Millisecond))
	}
	e.logf("traffic phase %v: server process cpu %v (%.0f%% of one core), client process cpu %v (%.0f%%)",
		wall.Round(time.Millisecond), srvCPU.Round(time.Millisecond), 100*srvCPU.Seconds()/wall.Seconds(),
		cliCPU.Round(time.Millisecond), 100*cliCPU.Seconds()/wall.Seconds())
	return delivery{expect: t.expect, pub: pub, drain: dr, serverCPU: srvCPU, clientCPU: cliCPU, redisCPU: redisCPU, serverWrites: writes}, nil
}

// finish describes the server and returns the result with d's deliveries
// and latencies, or an error if the work ran into -timeout.
func (e *env) finish(ctx context.Context, d delivery) (result, error) {
	e.srv.describe(e.log)
	e.logf("hub log records at error level (panics included): %d", e.hubLog.errors.Load())

	res, dr := e.res, d.drain
	res.Delivered = dr.Delivered
	res.Lost = d.expect - dr.Delivered
	if span := time.Duration(dr.LastNS - d.pub.start.Sub(e.epoch).Nanoseconds()); span > 0 && dr.Delivered > 0 {
		res.DeliveriesPerS = math.Round(float64(dr.Delivered) / span.Seconds())
	}
	res.P50Ms, res.P99Ms, res.MaxMs = ms(dr.P50NS), ms(dr.P99NS), ms(dr.MaxNS)
	res.ServerCPUS, res.ClientCPUS, res.RedisCPUS = round(d.serverCPU.Seconds(), 3), round(d.clientCPU.Seconds(), 3), round(d.redisCPU.Seconds(), 3)
	res.ServerWrites = d.serverWrites
	if d.serverCPU > 0 {
		res.DeliveriesPerCPUS = math.Round(float64(dr.Delivered) / d.serverCPU.Seconds())
	}
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("-timeout %v reached (the last %v are kept for shutting down): %w", e.cfg.timeout, e.reserve, err)
	}
	return res, nil
}

type pubStats struct {
	start    time.Time
	elapsed  time.Duration
	sent     int64
	failed   int64
	firstErr string
}

// publish calls t.send for -msgs payloads of -size bytes, each stamped with
// its send time (at a fixed rate, the time it was due), from t.callers
// goroutines, at t.rate messages per second in all or flat out. A payload
// is never reused: the hub keeps it.
func (e *env) publish(ctx context.Context, t traffic) pubStats {
	p := &publisher{traffic: t, n: int64(e.cfg.msgs), size: e.cfg.size, epoch: e.epoch, start: time.Now()}
	var wg sync.WaitGroup
	for range max(t.callers, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.caller(ctx)
		}()
	}
	wg.Wait()
	st := pubStats{start: p.start, elapsed: time.Since(p.start), sent: p.sent.Load(), failed: p.failed.count()}
	if err := p.failed.firstErr(); err != nil {
		st.firstErr = "; first error: " + err.Error()
	}
	return st
}

// publisher is the state publish's goroutines share.
type publisher struct {
	traffic
	n            int64 // payloads to send
	size         int
	epoch, start time.Time
	next, sent   atomic.Int64
	failed       tally
}

// caller is one goroutine of publish: it sends the next payload until there
// are none left.
func (p *publisher) caller(ctx context.Context) {
	alloc := payloads{size: p.size}
	for ctx.Err() == nil {
		i := p.next.Add(1) - 1
		if i >= p.n {
			return
		}
		stamp, ok := p.stamp(ctx, i)
		if !ok {
			return
		}
		b := alloc.next()
		putStamp(b, stamp.Nanoseconds())
		if err := p.send(ctx, b); err != nil {
			p.failed.add(err)
			continue
		}
		p.sent.Add(1)
	}
}

// stamp returns the send time of payload i, since the epoch: now, or at a
// fixed rate the time it is due, once it is.
func (p *publisher) stamp(ctx context.Context, i int64) (time.Duration, bool) {
	if p.rate <= 0 {
		return time.Since(p.epoch), true
	}
	due := p.start.Add(time.Duration(float64(i) / p.rate * float64(time.Second)))
	if !sleepUntil(ctx, due) {
		return 0, false
	}
	// At a fixed rate, latency counts from when the message was due, not
	// from when a server that fell behind got round to sending it:
	// otherwise a sender that blocks (raw) hides its backlog (coordinated
	// omission).
	return due.Sub(p.epoch), true
}

// payloads carves payloads out of 1 MiB blocks, so that publishing does not
// allocate per message.
type payloads struct {
	size int
	buf  []byte
}

func (p *payloads) next() []byte {
	if len(p.buf) < p.size {
		p.buf = make([]byte, max(p.size, (1<<20)/p.size*p.size))
		for i := range p.buf {
			p.buf[i] = padByte
		}
	}
	b := p.buf[:p.size:p.size]
	p.buf = p.buf[p.size:]
	return b
}

func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}
