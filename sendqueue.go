package wshub

import (
	"sync/atomic"

	"github.com/coder/websocket"
)

// outMsg is one message on its way to a socket: a payload of typ (text or
// binary), which the writer frames, or a frame already made (frameMsg), or
// the note that the rest of a frame is to be finished (restMsg); see
// wire.go.
type outMsg struct {
	typ  websocket.MessageType
	data []byte
}

// queuedOverhead is what each queued message counts against
// Options.SendQueueBytes besides its bytes: its slot in the queue and its
// framing, so that a queue of empty messages is bounded by bytes too.
const queuedOverhead = 64

// maxBatchBytes bounds, in queued bytes, the batch a writer takes from the
// queue at once (a larger message goes alone): the rest stays queued, where
// SlowDropOldest can still drop it, and a session holds at most this much
// besides its queue.
const maxBatchBytes = 256 << 10

// sendQueue is a session's queue of messages waiting for its socket. It
// owns the bounds (Options.SendQueueLen, and SendQueueBytes with each
// message counting its length plus queuedOverhead), the slow-consumer
// policy, the count of what it dropped, and a signal for whoever waits for
// room (recovery). It is guarded by its session's mu.
type sendQueue struct {
	msgs     []outMsg
	spare    []outMsg // the array of the batch written last, for reuse
	bytes    int
	maxLen   int
	maxBytes int
	policy   SlowPolicy
	dropped  *atomic.Uint64 // the hub's counter
	// room is closed, and forgotten, when the queue shrinks; a waiter
	// makes it.
	room chan struct{}
}

func newSendQueue(o *Options, dropped *atomic.Uint64) sendQueue {
	return sendQueue{maxLen: o.SendQueueLen, maxBytes: o.SendQueueBytes, policy: o.SlowPolicy, dropped: dropped}
}

// full reports whether the queue has no room for a message of n bytes. An
// empty queue always has room; otherwise it holds at most maxLen messages,
// and a message fits while its bytes and those queued stay within maxBytes.
func (q *sendQueue) full(n int) bool {
	return len(q.msgs) > 0 && (len(q.msgs) >= q.maxLen || q.bytes+n > q.maxBytes)
}

// push appends m. When the queue is full it applies the policy: under
// SlowDropOldest it drops the oldest messages to make room, counting them;
// under SlowClose it queues nothing and reports false, and the session must
// close.
func (q *sendQueue) push(m outMsg) bool {
	if q.full(m.size()) {
		return q.pushFull(m)
	}
	q.msgs = append(q.msgs, m)
	q.bytes += m.size() + queuedOverhead
	return true
}

// pushFull is push's slow path, for a full queue.
func (q *sendQueue) pushFull(m outMsg) bool {
	if q.policy == SlowClose {
		return false
	}
	var dropped uint64
	for q.full(m.size()) {
		q.bytes -= q.msgs[0].size() + queuedOverhead
		q.msgs[0] = outMsg{}
		q.msgs = q.msgs[1:]
		dropped++
	}
	q.dropped.Add(dropped)
	q.signal() // what was dropped may leave room for a larger waiter
	q.msgs = append(q.msgs, m)
	q.bytes += m.size() + queuedOverhead
	return true
}

// take moves the next batch out of the queue and returns it: all of the
// queue when it holds at most maxBatchBytes, else its oldest messages up to
// that, at least one. prev is the batch written last, cleared, whose array
// it reuses.
func (q *sendQueue) take(prev []outMsg) []outMsg {
	defer q.signal()
	if q.bytes <= maxBatchBytes {
		batch := q.msgs
		q.msgs, q.spare = q.spare, nil
		if q.msgs == nil {
			q.msgs = prev[:0]
		}
		q.bytes = 0
		return batch
	}
	n, size := 0, 0
	for ; n < len(q.msgs); n++ {
		c := q.msgs[n].size() + queuedOverhead
		if n > 0 && size+c > maxBatchBytes {
			break
		}
		size += c
	}
	batch := append(prev[:0], q.msgs[:n]...)
	clear(q.msgs[:n])
	q.msgs = q.msgs[n:]
	q.bytes -= size
	return batch
}

// recycle keeps a written batch's array for the next take.
func (q *sendQueue) recycle(batch []outMsg) { q.spare = batch[:0] }

// reset drops everything queued, as when the session closes.
func (q *sendQueue) reset() {
	q.msgs, q.bytes = nil, 0
	q.signal()
}

// empty reports whether nothing is queued.
func (q *sendQueue) empty() bool { return len(q.msgs) == 0 }

// roomSignal returns a channel closed when the queue next shrinks.
func (q *sendQueue) roomSignal() <-chan struct{} {
	if q.room == nil {
		q.room = make(chan struct{})
	}
	return q.room
}

func (q *sendQueue) signal() {
	if q.room != nil {
		close(q.room)
		q.room = nil
	}
}
