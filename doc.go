// Package wshub is a cluster-aware WebSocket hub to embed in a Go HTTP server.
//
// A Hub is an http.Handler. Mount it on the server you already have; code on
// any node then calls Send (every session of a user), Broadcast (every session
// in a topic) or SendSession (one session), and the message reaches the right
// sockets whichever node holds them:
//
//	hub, err := wshub.New(&wshub.Options{
//		Authenticate: func(r *http.Request) (string, error) { return userFromCookie(r) },
//		OnMessage: func(ctx context.Context, s *wshub.Session, m wshub.Message) {
//			_ = s.Hub().Broadcast(ctx, "lobby", m, wshub.Except(s.ID()))
//		},
//	})
//	mux.Handle("/ws", hub)
//	err = hub.Send(ctx, "user-42", wshub.Text("hello"))
//
// Messages reach clients byte for byte, as text or binary WebSocket messages:
// a browser's plain WebSocket is a complete client.
//
// # Scaling out
//
// Nodes share a backplane (package backplane). With none configured, a hub
// runs alone on a private in-memory one. To run several nodes, give each hub
// a node of a shared backplane: in one process, nodes of one memory.Bus; across
// processes, a networked backend opened from a URL:
//
//	bp, err := backplane.Open(ctx, cfg.BackplaneURL)
//	hub, err := wshub.New(&wshub.Options{Backplane: bp})
//
// Routing is interest-based: each node subscribes to the backplane channels
// of the users and topics it holds (u:<user>, t:<topic>) and to its own inbox
// (n:<node>), so a message reaches only the nodes that have a recipient.
// Cluster-wide Join, Leave and Disconnect travel the same way, as small
// control messages on the user's channel.
//
// # Delivery
//
// Delivery is at most once. On the memory backplane nothing is lost while the
// process lives; messages from one publisher to one user, topic or session
// arrive in the order they were sent. A backplane that loses its link reports
// it through Options.OnBackplaneEvent and Stats, never silently, and
// Hub.Health says whether the node delivers now. The package backplane/memory
// can cut a node off, delay or drop its traffic, so that an application can
// test how it behaves. On Redis, pub/sub mode is at most once with every
// outage reported; Streams mode loses nothing while a node is cut off, within
// its retention (package backplane/redis).
//
// # Resume
//
// On a backplane that keeps a log per channel (backplane.Log, such as Redis in
// Streams mode) a client can resume where it left off. It opts in with the
// query parameter wshub_positions=1 (PositionsParam) on the upgrade request;
// every message it gets is then "<head>\n<payload>", where head is
// "<offset> <channel>" for user and topic messages and empty for others. When
// it reconnects, to any node, it repeats the parameter wshub_since
// (SinceParam) with the last head it saw on each channel. For each channel the
// session holds once OnConnect has run, the hub queues what the client missed,
// read from the log page by page, then the head "!recovered <channel>", then
// live messages, with no duplicates; or "!not-recovered <channel>" when the
// log no longer has what it missed (trimmed, or lost: offsets carry the log's
// epoch), or the head is not one the log handed out, so that the application
// reloads its state. A client that sends wshub_client (ClientParam) with a key
// of its own is also spared the broadcasts its earlier connections were left
// out of with Except. Control operations (Join, Leave, Disconnect) are never
// replayed.
//
// # Presence
//
// A hub writes who it holds to its backplane's presence record (memory and
// Redis keep one; see backplane.Presence): each user's sessions, and each
// topic's users with their sessions. Any node, including one that serves no
// connection, then answers Online (a user's sessions anywhere: one read),
// TopicCount (O(1) at any size) and TopicMembers (pages by cursor, never one
// unbounded reply). Anonymous sessions are not counted. OnPresence and
// PresenceMessage report a user coming online or going offline, and first
// joining or last leaving a topic, once per change cluster-wide. Join and
// Leave with Acknowledged wait until every node holding the user applied
// them, and Limits.ClusterSessionsPerUser bounds a user's sessions across
// the cluster.
//
// Writes are batched: a connect is visible to other nodes after one round
// trip to the record, usually well under a millisecond on Redis. Each node
// refreshes its entries' lease a few times per time to live (on Redis,
// wsredis.Options.PresenceTTL, 10s by default: one command per node, however
// many sessions it holds). A node that dies, or is cut off from the record
// for longer than the time to live, has its sessions removed by the other
// nodes starting at most the time to live plus a third of it and one second
// after its last refresh, plus the removal itself, which grows with the dead
// node's sessions (on Redis, 1.5 to 5 s for 50,000 users on a loaded 2-core
// machine): that is how stale a count can be after a kill -9. During a
// partition, a count includes the cut-off node's sessions until then, and
// excludes them after; the node writes all it holds again when it can reach
// the record again (and after a Redis restart that lost the record, within
// one refresh). Counts are of what the record holds: a session being
// accepted on one node while another node reads may or may not be counted.
//
// # Trust model
//
// A hub obeys what arrives on its backplane channels: by default, anyone who
// can publish there (on Redis, any client allowed to PUBLISH on the prefix)
// can deliver any message to any user, disconnect users and join them to
// topics. Restrict the nodes' Redis user to the hub's prefix with ACLs (for
// example &wshub:* channels and ~wshub:* keys) and keep everyone else out.
// On top of that, Options.SigningKeys makes every node sign what it
// publishes (HMAC-SHA256 over the channel and the envelope) and drop, count
// (Stats.Forged) and log what does not verify, so that Redis access alone
// no longer steers delivery. Signatures do not hide anything: whoever can
// read the channels reads the messages. Nor do they stop replays: a signed
// message published again on its own channel verifies again (moving it to
// another channel does not). ACLs are the complement that keeps an
// attacker from reading and publishing in the first place.
//
// # Sessions and slow clients
//
// Each session has a bounded send queue (Options.SendQueueLen and
// SendQueueBytes). Producers never wait for a socket: Send, Broadcast and the
// backplane only append to queues, and a writer goroutine per session, which
// exists only while there is something to write, drains it. When a queue is
// full, Options.SlowPolicy closes the session with status 1013 or drops its
// oldest messages, and counts it. The queue is bounded primarily by bytes:
// a burst of N messages of S bytes fits when N × (S + 64) ≤ SendQueueBytes.
// Each socket's kernel send buffer is bounded too (Options.SocketWriteBuffer)
// and writes make progress in small pieces, so a client that reads slowly is
// kept (its oldest messages dropped under SlowDropOldest) while one that stops
// reading for WriteTimeout is closed; both kinds of slow close are counted in
// Stats.SlowClosed and reported to OnDisconnect with an error wrapping
// ErrSlowClient. A broadcast is encoded once, as a WebSocket frame, and its
// bytes are shared by every recipient: the hub writes its data frames to the
// socket itself, below the websocket library, which still writes its own
// control frames (pongs, pings, close) whole between them. When a session
// has nothing queued and its socket is idle, a fan-out that is not part of a
// burst writes the frame to the socket itself without waiting (spread over
// the cores for a large topic) and hands only what the socket would not take
// to the writer; the queue, its bounds and the order of messages are the
// same either way.
//
// # Concurrency
//
// All methods of Hub and Session are safe for concurrent use. OnMessage is
// called one message at a time per session, in order; sessions are handled
// concurrently. Hooks run on the session's own goroutine; a slow hook slows
// only its session. A panic in OnConnect or OnMessage is logged and ends that
// session (1011, or 500 before the handshake), and OnDisconnect receives
// ErrHookPanic; a panic in OnDisconnect is logged.
//
// # Errors
//
// Calls validate their input and return errors that wrap the sentinels of this
// package (ErrInvalidUserID, ErrInvalidTopic, ErrInvalidMessage,
// ErrMessageTooLarge, ErrClosed, ...), so callers branch with errors.Is.
// Backplane errors such as backplane.ErrUnavailable stay reachable the same
// way. No call panics on bad input.
//
// # Shutting down
//
// Hub.Close stops accepting upgrades, lets every session send what it has
// queued, closes each with status 1001 (going away) and returns once every
// goroutine the hub started has ended. Before a restart, call Hub.Drain
// first: ReadinessHandler fails at once, upgrades get 503 with Retry-After,
// and sessions are closed in small staggered batches with 1012 (service
// restart), so that clients reconnect to other nodes at once, but not all
// in the same instant; clients that resume lose nothing on a backplane
// that keeps logs. LivenessHandler fails only once the hub is closed.
//
// # Metrics
//
// Hub.Stats has the counters; Hub.Metrics adds gauges (sessions, users,
// topics, queue depths), closes by reason and two latency histograms
// (publish to enqueue, enqueue to write). Package metrics exports them to
// Prometheus without this package depending on it.
package wshub
