package memory

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wshub/wshub/backplane"
)

// Errors returned by Bus. They are wrapped with %w, so test for them with
// errors.Is.
var (
	// ErrNodeExists is returned by NewNode for a name held by a node that is
	// not closed.
	ErrNodeExists = errors.New("memory: node already exists")
	// ErrUnknownNode is returned for a name that no open node holds.
	ErrUnknownNode = errors.New("memory: unknown node")
)

func init() {
	backplane.Register("memory", open)
}

// open is the backplane.Opener of the "memory" scheme. It accepts only
// "memory://" (or its equivalent "memory:") and returns a node on a new
// private bus. A memory node logs nothing, so it has no use for the
// options.
func open(ctx context.Context, u *url.URL, _ backplane.OpenOptions) (backplane.Backplane, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if u.Host != "" || u.Path != "" || u.Opaque != "" || u.User != nil ||
		u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return nil, fmt.Errorf("memory: url %q: only \"memory://\" is accepted (a shared bus cannot be named in a url; use memory.NewBus)", u.Redacted())
	}
	return NewBus().NewNode("")
}

// Default bounds of a node's delivery queue; Bus.SetQueueLimit changes them
// per node. They are far above what a node holds when its handler keeps up
// (the hub's handler only queues to sessions), so that bursts pass without
// waiting, and they bound the memory of a node that falls behind: 4096
// messages is sixteen times a hub session's default queue, and 16 MiB holds
// sixteen messages of the hub's default MaxMessageSize.
const (
	// DefaultQueueMessages is the number of messages a node's queue holds
	// before Publish waits for room in it.
	DefaultQueueMessages = 4096
	// DefaultQueueBytes is the number of payload bytes a node's queue holds
	// before Publish waits for room in it.
	DefaultQueueBytes = 16 << 20
)

// NodeStats counts the deliveries to one node and describes its queue.
type NodeStats struct {
	// Delivered is the number of messages handed to the node's handler.
	Delivered uint64
	// Dropped is the number of messages meant for the node that a fault
	// (Partition or SetDropRate) dropped.
	Dropped uint64

	// Queued is the number of messages meant for the node that its handler
	// has not yet returned from: those in its queue and those its delivery
	// goroutine has taken from it. QueuedBytes is the sum of their payload
	// lengths.
	Queued      int
	QueuedBytes int
	// PeakQueued and PeakQueuedBytes are the highest Queued and QueuedBytes
	// since the node was made.
	PeakQueued      int
	PeakQueuedBytes int
	// Waits is the number of times a Publish found the node's queue full
	// and waited for room in it.
	Waits uint64
	// Abandoned is the number of those waits that ended because the
	// publisher's context ended first; the message of such a Publish was
	// handed to no node.
	Abandoned uint64
}

// Bus is an in-process message bus shared by the nodes of a simulated
// cluster. It injects faults into the deliveries to a node, named by the name
// given to NewNode.
//
// A Bus has no goroutine of its own and needs no closing: it is garbage once
// its nodes are closed and unreferenced. The zero Bus is ready to use. A Bus
// must not be copied after first use. All methods are safe for concurrent use.
type Bus struct {
	// mu guards everything below and the subs set of every node. Publish holds
	// it for reading while it checks the queues of the subscribers for room
	// and appends to them, never while it waits for room.
	mu sync.RWMutex
	// nodes holds the open nodes by name.
	nodes map[string]*Node
	// index maps a channel to the nodes subscribed to it. A slice is never
	// empty: the entry is deleted with the last subscriber.
	index map[string][]*Node
	// seq numbers the generated node names.
	seq uint64
	// epoch is the origin of the monotonic clock used for delays and log
	// ages.
	epoch time.Time

	// logMu guards the fields below. It may be held while a chanLog's
	// mutex is taken, but is never taken while one of those or mu is held.
	logMu sync.Mutex
	// logs holds the channel logs by channel; oldest and newest end their
	// list, from the least to the most recently published to.
	logs           map[string]*chanLog
	oldest, newest *chanLog
	// logMsgs and logAge are the logs' bounds (see SetLogLimit); logMsgs
	// is 0 while the logs are off. logOn mirrors logMsgs > 0 for publish
	// to read without locking.
	logMsgs int
	logAge  time.Duration
	logOn   atomic.Bool
	// epochTag and epochs make the logs' epochs (see newEpochLocked).
	epochTag, epochs uint32

	// presence is the store of backplane.Presence, with its own lock.
	presence presenceStore
}

// NewBus returns an empty bus.
func NewBus() *Bus {
	b := &Bus{}
	b.init()
	return b
}

// init makes the maps of a zero Bus. b.mu must be held for writing, or b must
// not be shared yet.
func (b *Bus) init() {
	if b.nodes == nil {
		b.nodes = make(map[string]*Node)
		b.index = make(map[string][]*Node)
		b.epoch = time.Now()
	}
}

// now returns the time elapsed since b.epoch on the monotonic clock, never 0.
func (b *Bus) now() int64 {
	return int64(time.Since(b.epoch)) | 1
}

// NewNode adds a node to the bus. An empty name asks for a generated one,
// unique on this bus; otherwise the name must not be held by a node that is
// not closed (closing a node frees its name). The node's name identifies it in
// Partition, Heal, SetDelay, SetDropRate and Stats.
//
// The caller owns the node and must Close it.
func (b *Bus) NewNode(name string) (*Node, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	if name == "" {
		for {
			b.seq++
			name = "node-" + strconv.FormatUint(b.seq, 10)
			if _, taken := b.nodes[name]; !taken {
				break
			}
		}
	} else if _, taken := b.nodes[name]; taken {
		return nil, fmt.Errorf("%w: %q", ErrNodeExists, name)
	}
	n := &Node{
		bus:      b,
		name:     name,
		subs:     make(map[string]struct{}),
		wake:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
		maxMsgs:  DefaultQueueMessages,
		maxBytes: DefaultQueueBytes,
	}
	b.nodes[name] = n
	return n, nil
}

// node returns the open node called name.
func (b *Bus) node(name string) (*Node, error) {
	b.mu.RLock()
	n := b.nodes[name]
	b.mu.RUnlock()
	if n == nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownNode, name)
	}
	return n, nil
}

// Partition cuts the named node off the bus, as if its link to the bus were
// down. While it is cut off:
//   - every message meant for it is dropped and counted in NodeStats.Dropped;
//   - its Publish returns an error wrapping backplane.ErrUnavailable;
//   - its Subscribe and Unsubscribe still succeed and take effect on Heal;
//   - a Publish that waits for room in its queue stops waiting for it;
//   - its presence calls return an error wrapping backplane.ErrUnavailable,
//     so its presence instances die after the time to live (see
//     SetPresenceTTL).
//
// The node's Notify function receives an EventDown whose Err wraps
// backplane.ErrUnavailable, after the messages already queued for the node,
// which are still delivered. Partitioning a node that is already cut off does
// nothing.
func (b *Bus) Partition(name string) error {
	n, err := b.node(name)
	if err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.partitioned {
		return nil
	}
	n.partitioned = true
	n.lostWhileCut = false
	n.cut.Store(true)
	n.wakeWaitersLocked() // nothing more is queued for it
	n.pushEventLocked(backplane.Event{
		Kind: backplane.EventDown,
		Err:  fmt.Errorf("memory: node %q partitioned: %w", n.name, backplane.ErrUnavailable),
	})
	return nil
}

// Heal reconnects a node cut off by Partition. Its Notify function receives
// an EventRestored whose Gap is true if at least one message meant for the
// node was dropped while it was cut off. Messages published after Heal returns
// reach the node again. Healing a node that is not cut off does nothing.
func (b *Bus) Heal(name string) error {
	n, err := b.node(name)
	if err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.partitioned {
		return nil
	}
	n.partitioned = false
	n.cut.Store(false)
	n.pushEventLocked(backplane.Event{Kind: backplane.EventRestored, Gap: n.lostWhileCut})
	n.lostWhileCut = false
	return nil
}

// SetDelay makes every message published from now on to the named node reach
// its handler d after it was published. Order is kept: a message never
// overtakes one queued before it, even if the delay was shortened in between.
// Delayed messages count in the node's queue, so a delayed node that
// receives more than its queue holds in d makes Publish wait (see
// SetQueueLimit). A delay of 0 turns the delay off; a negative one is an
// error.
func (b *Bus) SetDelay(name string, d time.Duration) error {
	if d < 0 {
		return fmt.Errorf("memory: negative delay %v for node %q", d, name)
	}
	n, err := b.node(name)
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.delay = d
	n.mu.Unlock()
	return nil
}

// SetDropRate makes each message published from now on to the named node be
// dropped with probability p, counted in NodeStats.Dropped. p must be in
// [0, 1]: 0 drops nothing, 1 drops everything.
func (b *Bus) SetDropRate(name string, p float64) error {
	if math.IsNaN(p) || p < 0 || p > 1 {
		return fmt.Errorf("memory: drop rate %v for node %q is not in [0, 1]", p, name)
	}
	n, err := b.node(name)
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.dropRate = p
	n.mu.Unlock()
	return nil
}

// SetQueueLimit bounds the delivery queue of the named node to messages
// messages and bytes payload bytes; both must be positive. The defaults are
// DefaultQueueMessages and DefaultQueueBytes. The queue counts every message
// meant for the node that its handler has not yet returned from (see
// NodeStats.Queued). A Publish that finds the queue full waits for room in it
// (see Node.Publish); a single message larger than bytes is accepted when the
// queue is empty. Lowering the limit below what the queue holds discards
// nothing: publishers wait until it has drained below the new limit.
func (b *Bus) SetQueueLimit(name string, messages, bytes int) error {
	if messages <= 0 || bytes <= 0 {
		return fmt.Errorf("memory: queue limit of %d messages and %d bytes for node %q: both must be positive", messages, bytes, name)
	}
	n, err := b.node(name)
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.maxMsgs, n.maxBytes = int64(messages), int64(bytes)
	n.wakeWaitersLocked()
	n.mu.Unlock()
	return nil
}

// Stats returns the delivery counters and the queue figures of the named
// node.
func (b *Bus) Stats(name string) (NodeStats, error) {
	n, err := b.node(name)
	if err != nil {
		return NodeStats{}, err
	}
	st := NodeStats{
		Delivered: n.delivered.Load(),
		Dropped:   n.dropped.Load(),
		Waits:     n.waits.Load(),
		Abandoned: n.abandoned.Load(),
	}
	n.mu.Lock()
	msgs, bytes := n.queuedLocked()
	st.Queued, st.QueuedBytes = int(msgs), int(bytes)
	st.PeakQueued, st.PeakQueuedBytes = int(n.peakQueued), int(n.peakQueuedBytes)
	n.mu.Unlock()
	return st, nil
}

// publish hands payload to every node subscribed to channel, all or none.
// It first checks that the queue of every subscriber has room and, if one
// is full, waits for room in it and starts again; once all have room it
// appends to each queue. Between the check and the append, concurrent
// publishes may append too: a queue can exceed its bound by one message per
// concurrent publish. publish returns an error wrapping ctx.Err() when ctx
// ends, and one wrapping backplane.ErrClosed when from is closed, before the
// message was handed to any node.
//
// While the bus keeps logs, publish holds the channel's log locked from
// before it checks the queues until it has appended to them, so that the
// messages of a channel are appended to its log and to every queue in the
// same order.
func (b *Bus) publish(ctx context.Context, from *Node, channel string, payload []byte) error {
	var now int64 // read lazily, once, for delayed nodes
	for {
		var (
			lg      *chanLog
			at      int64
			maxMsgs int
			maxAge  time.Duration
		)
		if b.logOn.Load() {
			lg, at, maxMsgs, maxAge = b.logForPublish(channel)
		}
		b.mu.RLock()
		subs := b.index[channel]
		var (
			full *Node
			room <-chan struct{}
		)
		for _, n := range subs {
			if room = n.room(len(payload)); room != nil {
				full = n
				break
			}
		}
		if full == nil {
			var off string
			if lg != nil {
				off = lg.appendLocked(payload, at, maxMsgs, maxAge)
			}
			for _, n := range subs {
				n.enqueue(channel, off, payload, &now)
			}
			b.mu.RUnlock()
			if lg != nil {
				lg.mu.Unlock()
			}
			return nil
		}
		b.mu.RUnlock()
		if lg != nil {
			lg.mu.Unlock()
		}

		full.waits.Add(1)
		select {
		case <-room:
		case <-full.stop: // detached: it is no longer among the subscribers
		case <-from.stop:
			return from.errClosed()
		case <-ctx.Done():
			full.abandoned.Add(1)
			return fmt.Errorf("memory: node %q: queue of node %q full: %w", from.name, full.name, ctx.Err())
		}
		if err := from.publishable(); err != nil {
			return err
		}
	}
}

// subscribe adds channels to n's interest.
func (b *Bus) subscribe(n *Node, channels []string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n.closed.Load() {
		return n.errClosed()
	}
	for _, ch := range channels {
		if _, ok := n.subs[ch]; ok {
			continue
		}
		n.subs[ch] = struct{}{}
		b.index[ch] = append(b.index[ch], n)
	}
	return nil
}

// unsubscribe removes channels from n's interest.
func (b *Bus) unsubscribe(n *Node, channels []string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n.closed.Load() {
		return n.errClosed()
	}
	removed := false
	for _, ch := range channels {
		if _, ok := n.subs[ch]; !ok {
			continue
		}
		delete(n.subs, ch)
		b.removeLocked(ch, n)
		removed = true
	}
	if removed {
		// A publisher waiting for room in n's queue may no longer need it.
		n.mu.Lock()
		n.wakeWaitersLocked()
		n.mu.Unlock()
	}
	return nil
}

// removeLocked deletes n from the subscribers of ch. b.mu must be held for
// writing.
func (b *Bus) removeLocked(ch string, n *Node) {
	list := b.index[ch]
	for i, m := range list {
		if m != n {
			continue
		}
		last := len(list) - 1
		list[i] = list[last]
		list[last] = nil
		list = list[:last]
		break
	}
	if len(list) == 0 {
		delete(b.index, ch)
	} else {
		b.index[ch] = list
	}
}

// detach removes n from the bus: its name is freed, its subscriptions are
// dropped and it is marked closed. It reports whether n was still attached.
func (b *Bus) detach(n *Node) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n.closed.Load() {
		return false
	}
	n.closed.Store(true)
	for ch := range n.subs {
		b.removeLocked(ch, n)
	}
	clear(n.subs)
	if b.nodes[n.name] == n {
		delete(b.nodes, n.name)
	}
	return true
}
