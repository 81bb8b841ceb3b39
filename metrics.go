package wshub

import (
	"github.com/wshub/wshub/backplane"
)

// Metrics is a snapshot of what a hub measures, taken by Hub.Metrics for a
// metrics collector: the one in github.com/wshub/wshub/metrics exports it to
// Prometheus. Counters count since the hub started; gauges (Sessions, Users,
// Topics, BackplaneUp and the send queues) are as they were when the
// snapshot was taken.
type Metrics struct {
	Stats // the hub's counters, and the sessions open now

	Users  int // users with at least one session on this node
	Topics int // topics with at least one session of this node in them

	// PresenceEntries is how many entries this node holds in the
	// presence record: a user with sessions here, and each topic such a
	// user is in here (0 without presence). PresenceFailing is set while
	// this node's presence writes fail (they are retried).
	PresenceEntries int
	PresenceFailing bool

	Written       uint64 // messages written to sockets (Delivered counts those queued)
	BytesReceived uint64 // bytes of the messages read from clients, WebSocket framing not included
	BytesWritten  uint64 // bytes of the messages written to sockets, WebSocket framing not included
	// PublishErrors counts the calls of Send, Broadcast, SendSession, Join,
	// Leave and Disconnect whose publish to the backplane failed (each
	// returned the error): the backplane refused it, or the caller's
	// context ended first.
	PublishErrors uint64

	Closed Closes // sessions that ended, by why

	// BackplaneUp is false while the backplane reports that it cannot
	// deliver (see Hub.Health); a backplane that does not implement
	// backplane.Checker is taken to be up.
	BackplaneUp bool

	// SendQueues is how many sessions have how many messages in their send
	// queue, counted when the snapshot was taken: Count is the sessions,
	// Sum the messages queued in all, Bounds in messages.
	SendQueues Histogram
	// QueuedBytes is the bytes in all send queues, each message counting
	// its length plus 64, as Options.SendQueueBytes counts them.
	QueuedBytes uint64
	// LongestQueue is the number of messages in the longest send queue.
	LongestQueue int

	// PublishToEnqueue is the time from a message's publish (by Send,
	// Broadcast or SendSession, on any node) to its queueing to this node's
	// sessions, in seconds: the backplane's latency plus the fan-out to the
	// last local recipient. It is observed once per message that reached at
	// least one session, for messages whose envelope carries their publish
	// time (hubs of this version write it); between nodes it includes how
	// far their clocks are apart, a negative time counting as 0. Messages
	// recovered from a backplane's log for a resuming client are not
	// observed: their wait was the client's absence.
	PublishToEnqueue Histogram
	// EnqueueToWrite is the write latency, in seconds: the time from a
	// message's queueing to a session until the socket write that carries
	// it returned. It is observed once per batch a session's writer writes
	// (everything queued when the writer takes it, up to 256 KiB), for the
	// batch's oldest message, the one that waited longest: an upper bound
	// for the others. It covers the wait in the queue behind earlier
	// batches and the write itself, bounded by WriteTimeout; a failed write
	// is not observed.
	EnqueueToWrite Histogram
}

// Closes counts the sessions of a hub that ended, once each. A session the
// hub closed for a reason of its own (too slow, past its rate limits,
// invalid text) counts under that reason, whatever happened to its
// connection next; one that a hook's panic, a shutdown or the application
// closed counts under Error, Shutdown or App; any other counts by how its
// client ended it: Normal or Error.
type Closes struct {
	// SlowQueueFull counts sessions closed because their send queue was
	// full under SlowClose (status 1013).
	SlowQueueFull uint64
	// SlowWriteTimeout counts sessions closed because a write to them made
	// no progress for WriteTimeout, under either SlowPolicy.
	SlowWriteTimeout uint64
	// RateLimit counts sessions closed for going past their Limits under
	// RateClose (1008).
	RateLimit uint64
	// InvalidText counts sessions closed for a text message that is not
	// UTF-8 (1007).
	InvalidText uint64
	// Shutdown counts sessions closed by Drain (1012) or by Close (1001),
	// or that ended while the hub was closing.
	Shutdown uint64
	// Error counts sessions that ended because a hook panicked (1011), or
	// without a close from the client that Normal counts: the connection
	// was dropped or reset, a ping went unanswered, a write failed, or the
	// client closed with a status that reports an error (1002 protocol
	// error, 1011 internal error, ...).
	Error uint64
	// App counts sessions the application closed: with Session.Close or
	// Hub.Disconnect, or by returning an error from OnConnect (1008).
	App uint64
	// Normal counts sessions the client closed with a status that reports
	// no error: 1000 (normal closure), 1001 (going away, as a browser does
	// when its page goes away), none, or an application's (3000 to 4999).
	Normal uint64
}

// Histogram is a distribution in fixed buckets, as Metrics reports it.
type Histogram struct {
	// Bounds are the upper bounds of the buckets, ascending: a value falls
	// in the first bucket whose bound is at least the value.
	Bounds []float64
	// Counts holds one count per bucket, not cumulative: Counts[i] counts
	// the values in (Bounds[i-1], Bounds[i]], and the last of its
	// len(Bounds)+1 counts those above the last bound.
	Counts []uint64
	Count  uint64  // the sum of Counts
	Sum    float64 // the sum of the values
}

// sendQueueBounds are the upper bounds of Metrics.SendQueues's buckets, in
// messages: an empty queue, then powers of 4 less one.
var sendQueueBounds = [...]float64{0, 3, 15, 63, 255, 1023, 4095, 16383}

// Metrics returns a snapshot of the hub's measurements, for a metrics
// collector (Stats is the cheaper call for the counters alone). It walks
// the node's sessions to measure their send queues, holding the registry's
// lock only to list them and each session's lock only to read its queue's
// length, so it costs some 150ns per session (1.5ms for 10,000): call it once
// per scrape, not in a loop.
func (h *Hub) Metrics() Metrics {
	m := Metrics{
		Stats:            h.Stats(),
		Written:          h.meters.written.Load(),
		BytesReceived:    h.meters.bytesIn.Load(),
		BytesWritten:     h.meters.bytesOut.Load(),
		PublishErrors:    h.meters.publishErrors.Load(),
		Closed:           h.meters.closes(),
		BackplaneUp:      true,
		PublishToEnqueue: h.meters.publishToEnqueue.snapshot(),
		EnqueueToWrite:   h.meters.enqueueToWrite.snapshot(),
	}
	if c, ok := h.bp.(backplane.Checker); ok && c.Health() != nil {
		m.BackplaneUp = false
	}
	if h.pres != nil {
		m.PresenceEntries = h.pres.entries()
		m.PresenceFailing = h.pres.failing.Load()
	}
	var sessions []*Session
	sessions, m.Users, m.Topics = h.reg.snapshot()
	m.Sessions = len(sessions)
	m.SendQueues = Histogram{
		Bounds: append([]float64(nil), sendQueueBounds[:]...),
		Counts: make([]uint64, len(sendQueueBounds)+1),
		Count:  uint64(len(sessions)),
	}
	for _, s := range sessions {
		n, b := s.queueDepth()
		i := 0
		for i < len(sendQueueBounds) && float64(n) > sendQueueBounds[i] {
			i++
		}
		m.SendQueues.Counts[i]++
		m.SendQueues.Sum += float64(n)
		m.QueuedBytes += uint64(b)
		m.LongestQueue = max(m.LongestQueue, n)
	}
	return m
}
