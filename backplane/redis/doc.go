// Package redis is a wshub backplane on Redis: the same hub on many nodes,
// with Redis moving the messages between them.
//
// Import it under another name, since go-redis is also package redis:
//
//	import wsredis "github.com/wshub/wshub/backplane/redis"
//
//	bp, err := wsredis.NewPubSub(redisClient, nil) // or backplane.Open(ctx, "redis://127.0.0.1:6379/0")
//	hub, err := wshub.New(&wshub.Options{Backplane: bp})
//
// The package has two backplanes, on one shared machinery:
//
//   - PubSub (NewPubSub, or a URL with mode=pubsub, the default) moves
//     messages with Redis pub/sub alone: lowest latency, at most once.
//   - Streams (NewStreams, or mode=streams) also keeps a capped log per
//     channel: a node that was cut off catches up, and clients resume by
//     offset. Only a Streams is a backplane.Log, and only StreamsOptions
//     have the retention settings (MaxLen, MaxAge, EpochTTL).
//
// Both are a backplane.Backplane, a backplane.Notifier, a
// backplane.Checker and a backplane.Presence, and have Stats (a Streams has
// more of them, StreamsStats).
//
// # Delivery
//
// In a PubSub a message goes through Redis pub/sub: one PUBLISH, and
// Redis forwards it to the nodes subscribed to its channel. A node
// subscribes only to the channels of the users, topics and sessions it
// holds, so a node never receives traffic it would throw away, and the
// cost of a message does not grow with the number of channels a node
// holds. Delivery is at-most-once and ordered per publishing node and
// channel.
//
// Concurrent Publish calls are pipelined: several messages share one round
// trip to Redis. A message that finds no pipeline in flight goes out at
// once; the messages that come while one is in flight go out together as
// soon as it is answered. While publishes come closer together than half of
// Options.Linger (500µs), one that would go out alone waits up to Linger for
// the next to share its round trip, which at moderate rates saves Redis most
// of its CPU per message. Subscribe and Unsubscribe calls are sent on one
// subscription connection per node (per shard with a cluster); Subscribe
// returns when Redis has confirmed every channel.
//
// The subscription connection is the backplane's own, dialled with the
// options of the *redis.Client or *redis.ClusterClient given (its dialer,
// so TLS, and its credentials) and read in RESP2 by a reader that costs a
// message one allocation, its payload. Other clients, and a
// StreamingCredentialsProvider, subscribe through go-redis's PubSub. The
// client's OnConnect hook is not run on it.
//
// # Streams
//
// In a Streams every channel has a capped Redis stream as its log, trimmed
// to StreamsOptions.MaxLen entries and MaxAge, and expiring MaxAge after its
// last message. A publish is one script that appends to the log and
// publishes a wake-up with the entry's ID and the payload, so live delivery
// needs no extra read and wake-ups arrive in log order. Every message has an
// offset in its channel, "<epoch>:<position>".
//
// The epoch names the log's current life and is kept in a small key beside
// it that outlives it (StreamsOptions.EpochTTL). A log lost with its epoch
// key (a restart without persistence, FLUSHALL, a failover to a server
// without the data, eviction) comes back with a new epoch, so a node or
// client whose position is in the old one is told of a gap, or gets
// ErrNotRetained, and never that it is up to date. No loss needs Redis persistence
// (appendonly) and maxmemory-policy noeviction. A wake-up that is not one,
// or whose entry ID is ahead of the Redis clock, is dropped and counted in
// StreamsStats.Malformed.
//
// A node whose subscription connection was lost catches up from the logs
// before it delivers anything live: from the last entry it delivered on each
// channel (or where the log ended when it subscribed), page by page, dropping
// live copies of what it read. EventRestored has Gap set only when a log no
// longer held everything the node missed, or the log was lost. Streams.Read
// serves clients that resume from an offset (see the wshub package,
// "Resume"), in pages, and returns backplane.ErrNotRetained when retention
// dropped what they missed or the log was lost, and
// backplane.ErrInvalidOffset for an offset beyond the log's last entry.
//
// Redis 7 gives a new stream a 4 KB block, so each channel with a live log
// costs about 4.7 KB of Redis memory, plus roughly 90 bytes per retained
// small message.
//
// # Faults
//
// When the subscription connection fails, or the node's probe (a message it
// publishes to itself every ProbeInterval) does not come back within
// ProbeTimeout, the backplane reports an EventDown, throws the connection
// away and builds a new one subscribed to everything the node holds, with
// backoff. When the new one is confirmed it reports EventRestored; a PubSub
// sets Gap, since messages published in between were lost to this node,
// and a Streams sets it only when its catch-up could not recover them. The hub
// counts both (Stats.BackplaneDowns, Stats.BackplaneGaps) and passes them
// to Options.OnBackplaneEvent. Health says whether the node is delivering
// now.
//
// While Redis is unreachable, Publish fails with an error wrapping
// backplane.ErrUnavailable, or with ctx.Err() when ctx ends first; it never
// waits longer than its context. Subscribe fails at once while the node is
// known to be down.
//
// # Redis Cluster
//
// Given a *goredis.ClusterClient the backplane uses sharded pub/sub
// (SPUBLISH and SSUBSCRIBE, Redis 7 or later). Channels are spread over
// Options.Shards hash-tagged groups; each group lives in one slot, so one
// master handles its messages, and the node keeps one subscription
// connection per group it uses. When a slot moves to another master, Redis
// drops the subscriptions and the backplane rebuilds them on the new owner
// (reported as down and restored, with Gap set).
//
// # Presence
//
// Both backplanes are a backplane.Presence: the cluster-wide record of who
// is connected that the hub keeps (Online, TopicCount, TopicMembers, presence
// events, Limits.ClusterSessionsPerUser). For each presence key it keeps a
// hash of members and their sessions across the cluster (HLEN is the
// count), a sorted set that pages members in byte order by ZRANGEBYLEX in
// O(log n + limit), and each instance's own entries, all under one hash tag,
// so that on a Redis Cluster a key's record is in one slot and every update
// is one atomic script there. An update sets absolute counts, so it can be
// sent again safely, and its Limit is checked in the same script: of two
// nodes racing for the last place, one gets it.
//
// Each node's instance holds a lease in a sorted set, renewed by
// RefreshPresence every third of Options.PresenceTTL (10s by default): one
// script, however many entries the node has. Redis refuses an update that
// arrives after its instance's lease ended. When a node dies or is cut off,
// the next refresh of another node, one second after the lease ended (the
// clock skew allowed between a cluster's masters), removes its entries key
// by key, a bounded amount per refresh, and reports the members that left:
// PresenceTTL + PresenceTTL/3 + 1s after the dead node's last refresh at
// the latest, plus the time the removal itself takes, which grows with the
// dead node's entries (2,000 keys per round: measured 1.5 to 5 s for a node
// with 50,000 users on a loaded 2-core machine). The cut-off node's next refresh reports its instance Lost, as it
// does after a Redis restart that lost the record, and the hub writes its
// entries again under a new one.
//
// A connect costs one round trip of pipelined scripts with one Redis; with a
// cluster, one more (a SADD) the first time the instance has an entry in a
// key, and one (an SREM) when it has none left. Reads are one command each.
// The record needs no persistence to be right after a restart. With a
// cluster, a failover that loses acknowledged writes of one master but not
// of another can leave behind the entries of a node that dies later, which
// no refresh then removes; eviction can do the same anywhere. Use
// maxmemory-policy noeviction, and persistence on the masters.
//
// # Ownership
//
// A backplane never closes a client given to NewPubSub or NewStreams. One
// opened from a URL owns its client and closes it in Close.
package redis
