package metrics

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wshub/wshub"
)

// Option changes the collector that NewCollector returns.
type Option func(*options)

type options struct {
	constLabels prometheus.Labels
}

// ConstLabels adds labels of fixed values to every metric of the collector,
// for a process that registers several hubs on one registry (a "node"
// label, say). Wrapping the registerer does the same for a whole registry:
// prometheus.WrapRegistererWith(labels, reg). Labels must not be among
// those the collector sets itself (reason, length).
func ConstLabels(labels prometheus.Labels) Option {
	return func(o *options) {
		o.constLabels = make(prometheus.Labels, len(labels))
		for k, v := range labels {
			o.constLabels[k] = v
		}
	}
}

// NewCollector returns a prometheus.Collector of h's metrics (listed in the
// package documentation). Each scrape takes one snapshot with h.Metrics and
// turns it into constant metrics: the collector keeps no state and starts
// no goroutine, and a scrape costs what Hub.Metrics does, some 150ns per
// session. Register it once per hub.
func NewCollector(h *wshub.Hub, opts ...Option) prometheus.Collector {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("wshub_"+name, help, labels, o.constLabels)
	}
	c := &collector{hub: h}
	for _, s := range scalars {
		c.scalars = append(c.scalars, desc(s.name, s.help))
	}
	c.closed = desc("sessions_closed_total", "Sessions that ended, by why: "+
		"normal (the client closed with 1000, 1001, no status or an application's 3000-4999), "+
		"error (the connection dropped, a ping went unanswered, a write failed, a hook panicked or the client closed with an error status), "+
		"app (the application closed it: Session.Close, Hub.Disconnect, an OnConnect error), "+
		"shutdown (Drain or Close), "+
		"slow_queue_full (its send queue was full under SlowClose), "+
		"slow_write_timeout (a write made no progress for WriteTimeout), "+
		"rate_limit (past its Limits under RateClose), "+
		"invalid_text (a text message that is not UTF-8).", "reason")
	c.dropped = desc("backplane_messages_dropped_total", "Messages from the backplane dropped: "+
		"malformed (did not decode, or over the hub's limits) or forged (a missing or wrong signature, with SigningKeys).", "reason")
	c.queues = desc("send_queue_sessions", "Sessions by the number of messages in their send queue now.", "length")
	c.publishToEnqueue = desc("publish_to_enqueue_seconds", "Time from a message's publish, on any node, "+
		"to its queueing to this node's sessions (backplane latency and fan-out), once per message; "+
		"between nodes it includes their clock difference.")
	c.enqueueToWrite = desc("enqueue_to_write_seconds", "Write latency: time from a message's queueing to a session "+
		"until the socket write that carries it returned, once per batch written, for its oldest message.")
	return c
}

// collector is what NewCollector returns.
type collector struct {
	hub                              *wshub.Hub
	scalars                          []*prometheus.Desc // in the order of scalars
	closed, dropped, queues          *prometheus.Desc
	publishToEnqueue, enqueueToWrite *prometheus.Desc
}

var _ prometheus.Collector = (*collector)(nil)

// scalars are the metrics without labels.
var scalars = []struct {
	name, help string
	typ        prometheus.ValueType
	value      func(m *wshub.Metrics) float64
}{
	{"sessions", "WebSocket sessions open on this node.", gauge,
		func(m *wshub.Metrics) float64 { return float64(m.Sessions) }},
	{"users", "Users with at least one session on this node.", gauge,
		func(m *wshub.Metrics) float64 { return float64(m.Users) }},
	{"topics", "Topics with at least one session of this node in them.", gauge,
		func(m *wshub.Metrics) float64 { return float64(m.Topics) }},
	{"backplane_up", "1 while the backplane can deliver across the cluster, 0 while it reports that it cannot.", gauge,
		func(m *wshub.Metrics) float64 { return boolValue(m.BackplaneUp) }},
	{"presence_entries", "Entries this node holds in the presence record: users with sessions here, and each of their topics here.", gauge,
		func(m *wshub.Metrics) float64 { return float64(m.PresenceEntries) }},
	{"presence_writes_failing", "1 while this node's presence writes fail (they are retried), 0 otherwise.", gauge,
		func(m *wshub.Metrics) float64 { return boolValue(m.PresenceFailing) }},
	{"send_queue_messages", "Messages waiting in the sessions' send queues now.", gauge,
		func(m *wshub.Metrics) float64 { return m.SendQueues.Sum }},
	{"send_queue_bytes", "Bytes waiting in the sessions' send queues now, each message counting 64 more (as SendQueueBytes counts them).", gauge,
		func(m *wshub.Metrics) float64 { return float64(m.QueuedBytes) }},
	{"send_queue_longest_messages", "Messages in the longest send queue now.", gauge,
		func(m *wshub.Metrics) float64 { return float64(m.LongestQueue) }},
	{"sessions_accepted_total", "Sessions accepted: upgrades that completed.", counter,
		func(m *wshub.Metrics) float64 { return float64(m.Accepted) }},
	{"sessions_refused_total", "Upgrades refused by Limits.Sessions, SessionsPerUser or ClusterSessionsPerUser.", counter,
		func(m *wshub.Metrics) float64 { return float64(m.Refused) }},
	{"topic_joins_refused_total", "Joins refused by Limits.TopicsPerSession.", counter,
		func(m *wshub.Metrics) float64 { return float64(m.TopicsRefused) }},
	{"rate_limit_delays_total", "Times a client's reads waited for its rate limits (RateDelay).", counter,
		func(m *wshub.Metrics) float64 { return float64(m.RateDelayed) }},
	{"messages_received_total", "Messages read from clients.", counter,
		func(m *wshub.Metrics) float64 { return float64(m.Received) }},
	{"received_bytes_total", "Bytes of the messages read from clients, WebSocket framing not included.", counter,
		func(m *wshub.Metrics) float64 { return float64(m.BytesReceived) }},
	{"messages_queued_total", "Messages queued to this node's sessions.", counter,
		func(m *wshub.Metrics) float64 { return float64(m.Delivered) }},
	{"messages_sent_total", "Messages written to sockets.", counter,
		func(m *wshub.Metrics) float64 { return float64(m.Written) }},
	{"sent_bytes_total", "Bytes of the messages written to sockets, WebSocket framing not included.", counter,
		func(m *wshub.Metrics) float64 { return float64(m.BytesWritten) }},
	{"messages_dropped_total", "Queued messages dropped from full send queues under SlowDropOldest.", counter,
		func(m *wshub.Metrics) float64 { return float64(m.Dropped) }},
	{"publish_errors_total", "Calls of Send, Broadcast, SendSession, Join, Leave and Disconnect whose publish to the backplane failed.", counter,
		func(m *wshub.Metrics) float64 { return float64(m.PublishErrors) }},
	{"backplane_downs_total", "Times the backplane reported its link down.", counter,
		func(m *wshub.Metrics) float64 { return float64(m.BackplaneDowns) }},
	{"backplane_gaps_total", "Times the backplane came back with messages possibly lost.", counter,
		func(m *wshub.Metrics) float64 { return float64(m.BackplaneGaps) }},
}

const (
	gauge   = prometheus.GaugeValue
	counter = prometheus.CounterValue
)

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Describe sends the descriptors of every metric the collector exports.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.scalars {
		ch <- d
	}
	for _, d := range []*prometheus.Desc{c.closed, c.dropped, c.queues, c.publishToEnqueue, c.enqueueToWrite} {
		ch <- d
	}
}

// Collect takes a snapshot of the hub's metrics and sends them.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	m := c.hub.Metrics()
	for i, s := range scalars {
		ch <- prometheus.MustNewConstMetric(c.scalars[i], s.typ, s.value(&m))
	}
	for _, r := range []struct {
		reason string
		n      uint64
	}{
		{"normal", m.Closed.Normal},
		{"error", m.Closed.Error},
		{"app", m.Closed.App},
		{"shutdown", m.Closed.Shutdown},
		{"slow_queue_full", m.Closed.SlowQueueFull},
		{"slow_write_timeout", m.Closed.SlowWriteTimeout},
		{"rate_limit", m.Closed.RateLimit},
		{"invalid_text", m.Closed.InvalidText},
	} {
		ch <- prometheus.MustNewConstMetric(c.closed, counter, float64(r.n), r.reason)
	}
	ch <- prometheus.MustNewConstMetric(c.dropped, counter, float64(m.Malformed), "malformed")
	ch <- prometheus.MustNewConstMetric(c.dropped, counter, float64(m.Forged), "forged")
	q := m.SendQueues
	for i, n := range q.Counts {
		ch <- prometheus.MustNewConstMetric(c.queues, gauge, float64(n), lengthLabel(q.Bounds, i))
	}
	ch <- constHistogram(c.publishToEnqueue, m.PublishToEnqueue)
	ch <- constHistogram(c.enqueueToWrite, m.EnqueueToWrite)
}

// lengthLabel names bucket i of bounds, whose values are whole numbers: "0",
// "1-3", ..., "16384+" for the last.
func lengthLabel(bounds []float64, i int) string {
	lo := 0
	if i > 0 {
		lo = int(bounds[i-1]) + 1
	}
	if i == len(bounds) {
		return strconv.Itoa(lo) + "+"
	}
	hi := int(bounds[i])
	if lo == hi {
		return strconv.Itoa(lo)
	}
	return strconv.Itoa(lo) + "-" + strconv.Itoa(hi)
}

// constHistogram turns h, whose counts are per bucket, into a Prometheus
// histogram, whose counts are cumulative.
func constHistogram(d *prometheus.Desc, h wshub.Histogram) prometheus.Metric {
	buckets := make(map[float64]uint64, len(h.Bounds))
	var cum uint64
	for i, b := range h.Bounds {
		cum += h.Counts[i]
		buckets[b] = cum
	}
	return prometheus.MustNewConstHistogram(d, h.Count, h.Sum, buckets)
}
