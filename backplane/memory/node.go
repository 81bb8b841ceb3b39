package memory

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wshub/wshub/backplane"
)

var (
	_ backplane.Backplane = (*Node)(nil)
	_ backplane.Notifier  = (*Node)(nil)
	_ backplane.Checker   = (*Node)(nil)
)

// shrinkCap is the capacity above which a delivery buffer that was mostly
// empty is given back to the garbage collector after a burst.
const shrinkCap = 1 << 12

// Node is one member of a simulated cluster: its connection to a Bus. It
// implements backplane.Backplane and backplane.Notifier. Make nodes with
// Bus.NewNode; all methods are safe for concurrent use.
//
// Beyond the backplane.Backplane contract, a Node accepts Subscribe and
// Publish before Start: messages that arrive before Start are queued and
// delivered once it is called.
type Node struct {
	bus  *Bus
	name string

	// subs is the node's interest, guarded by bus.mu.
	subs map[string]struct{}
	// closed is set under bus.mu when the node leaves the bus.
	closed atomic.Bool
	// cut mirrors partitioned, for Publish to read without locking.
	cut atomic.Bool

	delivered atomic.Uint64
	dropped   atomic.Uint64

	// wake holds a token while queue is not empty and the delivery goroutine
	// has not taken it yet.
	wake chan struct{}
	// stop is closed by Close; done is closed when the delivery goroutine ends.
	stop chan struct{}
	done chan struct{}

	mu           sync.Mutex // guards the fields below
	queue        []delivery
	started      bool
	notify       func(backplane.Event)
	partitioned  bool
	lostWhileCut bool
	delay        time.Duration
	dropRate     float64
}

// delivery is one item of a node's queue: a message, or an event for the
// Notify function when note is set.
type delivery struct {
	channel string
	payload []byte
	// due is when the message may be delivered, in Bus.now time; 0 means at
	// once.
	due  int64
	note *notice
}

// notice is an event to report and the function to report it to.
type notice struct {
	fn func(backplane.Event)
	ev backplane.Event
}

// Name returns the node's name on its bus.
func (n *Node) Name() string { return n.name }

// Notify sets the function that receives the changes of the node's link to
// the bus caused by Bus.Partition and Bus.Heal. It is called by the delivery
// goroutine, never concurrently with the handler, in order with the messages.
// fn must not block. Events that happen while no function is set are not
// reported; a nil fn stops the reports.
func (n *Node) Notify(fn func(backplane.Event)) {
	n.mu.Lock()
	n.notify = fn
	n.mu.Unlock()
}

// Start sets the handler and starts the node's delivery goroutine, which
// calls h for every message that arrives, one at a time, in arrival order.
// h must not block and must not call Close. A second call returns an error
// wrapping backplane.ErrStarted.
func (n *Node) Start(h backplane.Handler) error {
	if h == nil {
		return errors.New("memory: Start with a nil handler")
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed.Load() {
		return n.errClosed()
	}
	if n.started {
		return fmt.Errorf("memory: node %q: %w", n.name, backplane.ErrStarted)
	}
	n.started = true
	go n.run(h)
	return nil
}

// Publish hands payload to every node subscribed to channel, this one
// included, without waiting for their handlers. The payload is not copied:
// the caller must not modify it afterwards. Publish returns an error wrapping
// backplane.ErrUnavailable while the node is partitioned, and ctx.Err() if ctx
// is already done.
func (n *Node) Publish(ctx context.Context, channel string, payload []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if n.closed.Load() {
		return n.errClosed()
	}
	if channel == "" {
		return errEmptyChannel()
	}
	if n.cut.Load() {
		return fmt.Errorf("memory: node %q is partitioned: %w", n.name, backplane.ErrUnavailable)
	}
	n.bus.publish(channel, payload)
	return nil
}

// Subscribe adds channels to the node's interest. Messages published to them
// after it returns are delivered to the handler. It succeeds while the node is
// partitioned; the interest takes effect when it is healed. Subscribe returns
// ctx.Err() if ctx is already done.
func (n *Node) Subscribe(ctx context.Context, channels ...string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if n.closed.Load() {
		return n.errClosed()
	}
	if err := checkChannels(channels); err != nil {
		return err
	}
	return n.bus.subscribe(n, channels)
}

// Unsubscribe removes channels from the node's interest. Messages published
// to them after it returns are not delivered; messages already queued for the
// node when it is called still are. Unsubscribing a channel the node does not
// hold is not an error. Unsubscribe returns ctx.Err() if ctx is already done.
func (n *Node) Unsubscribe(ctx context.Context, channels ...string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if n.closed.Load() {
		return n.errClosed()
	}
	if err := checkChannels(channels); err != nil {
		return err
	}
	return n.bus.unsubscribe(n, channels)
}

// Close removes the node from its bus, which frees its name, and waits for
// the delivery goroutine to end. Queued messages and events are discarded;
// the handler and the Notify function are not called after Close returns.
// Close must not be called from the handler. Calling Close again returns nil.
func (n *Node) Close() error {
	first := n.bus.detach(n)
	n.mu.Lock()
	if first {
		close(n.stop)
		n.queue = nil
	}
	started := n.started
	n.mu.Unlock()
	if started {
		<-n.done
	}
	return nil
}

// enqueue appends a message to the node's queue, unless a fault drops it.
// now caches the publish time, read at most once per publish.
func (n *Node) enqueue(channel string, payload []byte, now *int64) {
	n.mu.Lock()
	if n.partitioned || (n.dropRate > 0 && rand.Float64() < n.dropRate) {
		if n.partitioned {
			n.lostWhileCut = true
		}
		n.mu.Unlock()
		n.dropped.Add(1)
		return
	}
	var due int64
	if n.delay > 0 {
		if *now == 0 {
			*now = n.bus.now()
		}
		due = *now + int64(n.delay)
	}
	wasEmpty := len(n.queue) == 0
	n.queue = append(n.queue, delivery{channel: channel, payload: payload, due: due})
	n.mu.Unlock()
	if wasEmpty {
		n.signal()
	}
}

// pushEventLocked queues ev for the Notify function, if one is set. n.mu must
// be held.
func (n *Node) pushEventLocked(ev backplane.Event) {
	if n.notify == nil || n.closed.Load() {
		return
	}
	wasEmpty := len(n.queue) == 0
	n.queue = append(n.queue, delivery{note: &notice{fn: n.notify, ev: ev}})
	if wasEmpty {
		n.signal()
	}
}

// signal wakes the delivery goroutine. A token is pending or the goroutine is
// about to take the queue whenever the queue is not empty, so it only needs
// to be sent when the queue stops being empty.
func (n *Node) signal() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// run is the delivery goroutine. It takes the whole queue at once, delivers it
// in order and gives the emptied buffer back as the next queue.
func (n *Node) run(h backplane.Handler) {
	defer close(n.done)
	var (
		batch []delivery
		timer *time.Timer
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		select {
		case <-n.stop:
			return
		case <-n.wake:
		}
		n.mu.Lock()
		batch, n.queue = n.queue, batch[:0]
		n.mu.Unlock()
		for i := range batch {
			if n.closed.Load() {
				return
			}
			d := &batch[i]
			if d.due != 0 {
				if wait := time.Duration(d.due - n.bus.now()); wait > 0 {
					if timer == nil {
						timer = time.NewTimer(wait)
					} else {
						timer.Reset(wait)
					}
					select {
					case <-n.stop:
						return
					case <-timer.C:
					}
				}
			}
			if d.note != nil {
				d.note.fn(d.note.ev)
				continue
			}
			n.delivered.Add(1)
			h(d.channel, d.payload)
		}
		if cap(batch) > shrinkCap && len(batch) < cap(batch)/4 {
			batch = nil
		} else {
			clear(batch) // let the payloads go
		}
	}
}

// Health returns nil while the node delivers, an error wrapping
// backplane.ErrUnavailable while it is partitioned, and one wrapping
// backplane.ErrClosed after Close.
func (n *Node) Health() error {
	switch {
	case n.closed.Load():
		return n.errClosed()
	case n.cut.Load():
		return fmt.Errorf("memory: node %q is partitioned: %w", n.name, backplane.ErrUnavailable)
	}
	return nil
}

func (n *Node) errClosed() error {
	return fmt.Errorf("memory: node %q: %w", n.name, backplane.ErrClosed)
}

func errEmptyChannel() error {
	return fmt.Errorf("memory: empty channel name: %w", backplane.ErrInvalidChannel)
}

// checkChannels rejects empty channel names.
func checkChannels(channels []string) error {
	for _, ch := range channels {
		if ch == "" {
			return errEmptyChannel()
		}
	}
	return nil
}
