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
	_ backplane.Log       = (*Node)(nil)
)

// shrinkCap is the capacity above which a delivery buffer that was mostly
// empty is given back to the garbage collector after a burst.
const shrinkCap = 1 << 12

// Node is one member of a simulated cluster: its connection to a Bus. It
// implements backplane.Backplane, backplane.Notifier, backplane.Checker,
// backplane.Log (whose Read finds messages only while the bus keeps logs,
// see Bus.SetLogLimit) and backplane.Presence (on the bus's one presence
// store, see Bus.SetPresenceTTL). Make nodes with Bus.NewNode; all methods
// are safe for concurrent use.
//
// Beyond the backplane.Backplane contract, a Node accepts Subscribe and
// Publish before Start: messages that arrive before Start are queued, within
// the queue's bounds, and delivered once it is called.
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
	waits     atomic.Uint64
	abandoned atomic.Uint64

	// doneMsgs and doneBytes count the messages the handler returned from
	// since the delivery goroutine last subtracted them from queued and
	// queuedBytes: it adds to them without the lock. waiting is set while
	// roomCh is not nil, for it to see without the lock whether it must wake
	// someone.
	doneMsgs, doneBytes atomic.Int64
	waiting             atomic.Bool

	// wake holds a token while queue is not empty and the delivery goroutine
	// has not taken it yet.
	wake chan struct{}
	// stop is closed by Close; done is closed when the delivery goroutine ends.
	stop chan struct{}
	done chan struct{}

	mu    sync.Mutex // guards the fields below
	queue []delivery
	// queued and queuedBytes, less doneMsgs and doneBytes, count the
	// messages (not the events) of queue and of the batch the delivery
	// goroutine took from it, until the handler returns from each (see
	// queuedLocked); the peaks are the highest values of that difference.
	queued, queuedBytes         int64
	peakQueued, peakQueuedBytes int64
	// maxMsgs and maxBytes bound the queue (see fitsLocked).
	maxMsgs, maxBytes int64
	// roomCh is closed, and set to nil, when room may have appeared in the
	// queue; it is nil while no publisher waits for room.
	roomCh       chan struct{}
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
	offset  string // empty while the bus keeps no logs
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
// h must not block and must not call Close. Nor should h publish: only its
// returning makes room in this node's queue, so a Publish from h that finds
// the queue full would wait until its context ends. A second call returns an
// error wrapping backplane.ErrStarted.
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
// the caller must not modify it afterwards.
//
// The message is handed to all those nodes or to none. When the queue of one
// of them is full (see Bus.SetQueueLimit), Publish waits for room in it, for
// as long as ctx allows: so a publisher faster than a node's handler is held
// to its pace, and the node's memory stays bounded. A node partitioned or
// closed meanwhile is skipped. Concurrent publishes may each append after
// finding room, so a queue can exceed its bound by one message per
// concurrent Publish.
//
// Publish returns ctx.Err() if ctx is already done, and an error wrapping
// ctx.Err() if ctx ends while it waits; in both cases the message reached no
// node. It returns an error wrapping backplane.ErrUnavailable while this node
// is partitioned, and one wrapping backplane.ErrClosed once it is closed, even
// while Publish waits.
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
	if err := n.publishable(); err != nil {
		return err
	}
	return n.bus.publish(ctx, n, channel, payload)
}

// publishable returns nil if n may publish now, an error wrapping
// backplane.ErrClosed after Close and one wrapping backplane.ErrUnavailable
// while n is partitioned.
func (n *Node) publishable() error {
	switch {
	case n.closed.Load():
		return n.errClosed()
	case n.cut.Load():
		return fmt.Errorf("memory: node %q is partitioned: %w", n.name, backplane.ErrUnavailable)
	}
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
// A Publish of this node that waits for room returns an error wrapping
// backplane.ErrClosed; one of another node that waits for room in this node's
// queue goes on without this node. Close must not be called from the
// handler. Calling Close again returns nil.
func (n *Node) Close() error {
	first := n.bus.detach(n)
	n.mu.Lock()
	if first {
		close(n.stop)
		n.queue = nil
		// Nothing is queued any more: queuedLocked reports 0.
		n.queued, n.queuedBytes = n.doneMsgs.Load(), n.doneBytes.Load()
		n.wakeWaitersLocked()
	}
	started := n.started
	n.mu.Unlock()
	if started {
		<-n.done
	}
	return nil
}

// enqueue appends a message to the node's queue, unless a fault drops it.
// now caches the publish time, read at most once per publish. It does not
// check for room: Bus.publish did (see room).
func (n *Node) enqueue(channel, offset string, payload []byte, now *int64) {
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
	n.queue = append(n.queue, delivery{channel: channel, offset: offset, payload: payload, due: due})
	n.queued++
	n.queuedBytes += int64(len(payload))
	msgs, bytes := n.queuedLocked()
	n.peakQueued = max(n.peakQueued, msgs)
	n.peakQueuedBytes = max(n.peakQueuedBytes, bytes)
	n.mu.Unlock()
	if wasEmpty {
		n.signal()
	}
}

// room returns nil when a message of size payload bytes may be appended to
// n's queue now, or would not be queued at all because n is partitioned;
// otherwise it returns a channel that is closed when room may have appeared.
func (n *Node) room(size int) <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.partitioned || n.fitsLocked(size) {
		return nil
	}
	// Announce the wait, then look again: release counts a message before
	// it looks for waiters, so of a release and this wait at least one sees
	// the other, and no wake-up is lost.
	n.waiting.Store(true)
	if n.fitsLocked(size) {
		n.waiting.Store(n.roomCh != nil)
		return nil
	}
	if n.roomCh == nil {
		n.roomCh = make(chan struct{})
	}
	return n.roomCh
}

// queuedLocked returns the number of messages meant for n that its handler
// has not returned from, and the sum of their payload lengths. n.mu must be
// held.
func (n *Node) queuedLocked() (msgs, bytes int64) {
	return n.queued - n.doneMsgs.Load(), n.queuedBytes - n.doneBytes.Load()
}

// fitsLocked reports whether a message of size payload bytes fits in n's
// queue: one more message stays within both bounds, or the queue is empty
// (a message larger than the byte bound is not refused for ever). n.mu must
// be held.
func (n *Node) fitsLocked(size int) bool {
	msgs, bytes := n.queuedLocked()
	return msgs == 0 || (msgs < n.maxMsgs && bytes+int64(size) <= n.maxBytes)
}

// wakeWaitersLocked wakes every Publish waiting for room in n's queue; each
// checks again. n.mu must be held.
func (n *Node) wakeWaitersLocked() {
	if n.roomCh != nil {
		close(n.roomCh)
		n.roomCh = nil
	}
	n.waiting.Store(false)
}

// release accounts for a message of size payload bytes that the handler
// returned from. It takes the lock only when a publisher waits for room.
// Waiters are woken once the queue is down to three quarters of its bounds,
// or empty, rather than for every message, so that each wake-up lets a run
// of messages in.
func (n *Node) release(size int) {
	n.doneMsgs.Add(1)
	n.doneBytes.Add(int64(size))
	if !n.waiting.Load() {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	msgs, bytes := n.queuedLocked()
	if msgs == 0 || msgs <= n.maxMsgs-n.maxMsgs/4 && bytes <= n.maxBytes-n.maxBytes/4 {
		n.wakeWaitersLocked()
	}
}

// pushEventLocked queues ev for the Notify function, if one is set. Events do
// not count in the queue's bounds: there is one per Partition or Heal. n.mu
// must be held.
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
// in order and gives the emptied buffer back as the next queue. What it took
// still counts in the queue's bounds until the handler returns from each
// message.
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
		// Fold the releases of the last batch into the counts, which
		// keeps them small; queuedLocked is unchanged by it.
		n.queued -= n.doneMsgs.Swap(0)
		n.queuedBytes -= n.doneBytes.Swap(0)
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
			h(backplane.Message{Channel: d.channel, Offset: d.offset, Payload: d.payload})
			n.release(len(d.payload))
		}
		if cap(batch) > shrinkCap && len(batch) < cap(batch)/4 {
			batch = nil
		} else {
			clear(batch) // let the payloads go
		}
	}
}

// Read returns up to limit messages of channel's log published after
// offset, oldest first, with their offsets (see backplane.Log and
// Bus.SetLogLimit). An empty offset reads from the oldest message retained;
// a channel without a log has no messages. Read returns an error wrapping
// backplane.ErrNotRetained when messages after offset may have been
// dropped: the message at offset was dropped by retention, or offset is of
// another epoch (its log expired, or was dropped by Bus.DropLog), or the
// bus keeps no logs. It returns one wrapping backplane.ErrInvalidOffset for
// an offset the bus did not hand out: malformed, or after the last message
// of the channel's log. Like Publish, it fails with an error wrapping
// backplane.ErrUnavailable while the node is partitioned, and one wrapping
// backplane.ErrClosed after Close. The payloads are those published, not
// copies: they must not be modified.
func (n *Node) Read(ctx context.Context, channel, offset string, limit int) ([]backplane.Entry, error) {
	return n.bus.read(ctx, n, channel, offset, limit)
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
