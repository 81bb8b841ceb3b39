package wshub

import (
	"strings"
	"sync"
	"sync/atomic"

	"github.com/wshub/wshub/backplane"
)

// Bounds of what one user's channel holds back while a Join waits. Past
// them the gate stops waiting for the subscription and lets everything
// through, in order: a flood to one user must not grow the node.
const (
	gateMessages = 4096
	gateBytes    = 16 << 20
)

// joinGates makes a cluster-wide Join take effect on this node before
// anything that follows it on the user's channel: once a Join adds a local
// session to a topic whose subscription is not yet confirmed, later
// messages of that user's channel wait, in order, until it is (or fails),
// so that a user who saw a message sent after Join also gets the topic's
// broadcasts from then on. One goroutine per waiting channel, owned by the
// hub, drains it.
type joinGates struct {
	h *Hub

	waiting atomic.Int32 // len(gates), read without the lock on the hot path

	mu     sync.Mutex
	closed bool
	gates  map[string]*gate
	wg     sync.WaitGroup
}

// gate is one user channel's held-back messages.
type gate struct {
	pending []backplane.Message
	bytes   int
	// overflow is closed when pending outgrew the bounds: the drain stops
	// waiting.
	overflow chan struct{}
	full     bool
}

// holding reports whether channel's messages are held back now.
func (g *joinGates) holding(channel string) bool {
	if g.waiting.Load() == 0 || !strings.HasPrefix(channel, userPrefix) {
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.gates[channel] != nil
}

// hold queues a message behind a waiting Join, and reports
// whether it did.
func (g *joinGates) hold(m backplane.Message) bool {
	if g.waiting.Load() == 0 || !strings.HasPrefix(m.Channel, userPrefix) {
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	gt := g.gates[m.Channel]
	if gt == nil {
		return false
	}
	gt.pending = append(gt.pending, m)
	gt.bytes += len(m.Payload)
	if !gt.full && (len(gt.pending) > gateMessages || gt.bytes > gateBytes) {
		gt.full = true
		close(gt.overflow)
	}
	return true
}

// open starts holding channel back until f is done. It is called by the
// backplane's handler for channel, in order with hold.
func (g *joinGates) open(channel string, f *flush) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed || g.gates[channel] != nil {
		return
	}
	gt := &gate{overflow: make(chan struct{})}
	if g.gates == nil {
		g.gates = make(map[string]*gate)
	}
	g.gates[channel] = gt
	g.waiting.Add(1)
	g.wg.Add(1)
	go g.drain(channel, gt, f)
}

// drain waits for f, then applies what channel held back, one message at a
// time; a Join among them that must wait again makes it wait again. It
// ends when nothing is held.
func (g *joinGates) drain(channel string, gt *gate, f *flush) {
	defer g.wg.Done()
	for {
		// A failed subscription is retried by the interest manager;
		// what was held goes on regardless.
		if f != nil {
			select {
			case <-f.done:
			case <-gt.overflow:
			case <-g.h.ctx.Done():
			}
		}
		g.mu.Lock()
		if len(gt.pending) == 0 {
			delete(g.gates, channel)
			g.waiting.Add(-1)
			g.mu.Unlock()
			return
		}
		m := gt.pending[0]
		gt.pending[0] = backplane.Message{}
		gt.pending = gt.pending[1:]
		gt.bytes -= len(m.Payload)
		g.mu.Unlock()
		f = g.h.handle(m)
	}
}

// close stops opening gates and waits for the drains; the hub's context
// has ended, so none of them waits any more.
func (g *joinGates) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.wg.Wait()
}
