// Package metrics exports a wshub.Hub's metrics to Prometheus.
//
// NewCollector returns a prometheus.Collector over a hub; register it and
// serve the registry:
//
//	reg := prometheus.NewRegistry()
//	reg.MustRegister(metrics.NewCollector(hub))
//	mux.Handle("/ws", hub)
//	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
//
// The package is apart from wshub so that the hub itself does not depend on
// the Prometheus client. Each scrape takes one snapshot (Hub.Metrics); the
// collector keeps no state and starts no goroutine.
//
// # Metrics
//
// Labels come only from the small fixed sets below, never from user IDs or
// topics. To tell nodes apart, let Prometheus label its targets (it does:
// instance, pod), or add a label with ConstLabels or
// prometheus.WrapRegistererWith; a node's default NodeID is random, so a
// label of it would change at each restart.
//
// Gauges, as they are at the scrape:
//
//	wshub_sessions                        sessions open on this node
//	wshub_users                           users with a session on this node
//	wshub_topics                          topics with a session of this node in them
//	wshub_backplane_up                    1 while the backplane can deliver, else 0 (see Hub.Health)
//	wshub_presence_entries                entries this node holds in the presence record
//	wshub_presence_writes_failing         1 while this node's presence writes fail, else 0
//	wshub_send_queue_messages             messages waiting in all send queues
//	wshub_send_queue_bytes                bytes waiting in all send queues (each message counting 64 more)
//	wshub_send_queue_longest_messages     messages in the longest send queue
//	wshub_send_queue_sessions{length}     sessions by the messages in their queue; length is
//	                                      "0", "1-3", "4-15", "16-63", "64-255", "256-1023",
//	                                      "1024-4095", "4096-16383" or "16384+"
//
// Counters, since the hub started:
//
//	wshub_sessions_accepted_total         upgrades that completed
//	wshub_sessions_closed_total{reason}   sessions that ended, by the first reason that applies:
//	                                      slow_queue_full (a full send queue under SlowClose),
//	                                      slow_write_timeout (a write made no progress for WriteTimeout),
//	                                      rate_limit (past its Limits under RateClose),
//	                                      invalid_text (a text message that is not UTF-8),
//	                                      shutdown (Drain, 1012, or Close, 1001),
//	                                      error (dropped, reset, unanswered ping, failed write,
//	                                      a hook panicked, or a client close with an error status),
//	                                      app (Session.Close, Hub.Disconnect, an OnConnect error),
//	                                      normal (a client close with 1000, 1001, no status or 3000-4999)
//	wshub_sessions_refused_total          upgrades refused by the session Limits
//	wshub_topic_joins_refused_total       joins refused by Limits.TopicsPerSession
//	wshub_rate_limit_delays_total         times a client's reads waited for its rate limits (RateDelay)
//	wshub_messages_received_total         messages read from clients
//	wshub_received_bytes_total            bytes of those messages, WebSocket framing not included
//	wshub_messages_queued_total           messages queued to this node's sessions
//	wshub_messages_sent_total             messages written to sockets
//	wshub_sent_bytes_total                bytes of those messages, WebSocket framing not included
//	wshub_messages_dropped_total          queued messages dropped under SlowDropOldest
//	wshub_publish_errors_total            Send, Broadcast, SendSession, Join, Leave and Disconnect
//	                                      calls whose publish to the backplane failed
//	wshub_backplane_downs_total           times the backplane reported its link down
//	wshub_backplane_gaps_total            times it came back with messages possibly lost
//	wshub_backplane_messages_dropped_total{reason}
//	                                      messages from the backplane dropped: malformed or forged
//
// Histograms, in seconds, with buckets from 25µs to 10s:
//
//	wshub_publish_to_enqueue_seconds      from a message's publish, on any node, to its queueing
//	                                      to this node's sessions: the backplane's latency and the
//	                                      fan-out, once per message; between nodes, it includes
//	                                      how far their clocks are apart
//	wshub_enqueue_to_write_seconds        write latency: from a message's queueing to a session
//	                                      until the socket write carrying it returned, once per
//	                                      batch the session's writer writes, for its oldest message
//
// wshub.Metrics documents each measure in full. The queue distribution is
// a set of gauges rather than a histogram: it is counted afresh at each
// scrape and goes down as well as up, which a Prometheus histogram, made of
// counters, must not.
package metrics
