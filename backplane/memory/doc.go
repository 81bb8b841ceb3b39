// Package memory is an in-process backplane that simulates a whole wshub
// cluster inside one program, usually one test.
//
// A Bus is the shared message bus; each Node made by Bus.NewNode is one
// cluster member and implements backplane.Backplane and backplane.Notifier
// (and backplane.Log, see "Logs and resume", and backplane.Presence, see
// "Presence"). Give each hub of the simulated cluster its own Node of the same Bus:
//
//	bus := memory.NewBus()
//	a, _ := bus.NewNode("a") // backplane of hub A
//	b, _ := bus.NewNode("b") // backplane of hub B
//
// # Faults
//
// The Bus injects faults by node name, so tests can check how an application
// behaves when a node is cut off, slow or lossy:
//
//	bus.Partition("b")                     // b is cut off: EventDown; what is sent to it is dropped; its Publish fails
//	bus.Heal("b")                          // b receives again: EventRestored, Gap true if something was dropped
//	bus.SetDelay("b", 50*time.Millisecond) // every later delivery to b arrives 50ms after its publish, in order
//	bus.SetDropRate("b", 0.1)              // each delivery to b is dropped with probability 0.1
//	bus.SetQueueLimit("b", 100, 1<<20)     // b queues at most 100 messages, 1 MiB: then Publish waits
//	st, _ := bus.Stats("b")                // st.Delivered, st.Dropped, st.Queued, st.PeakQueued, st.Waits...
//	bus.DropPresence()                     // every presence entry is lost: every live instance reports Lost
//
// # Delivery semantics
//
// A message published on a channel is handed to every node subscribed to that
// channel at the time of the publish, including the publisher. Nothing is lost
// while the process lives, except what a fault drops (and counts). The
// messages of one publisher on one channel arrive in the order they were
// published.
//
// Each node has one delivery goroutine, started by Start and ended by Close,
// that drains a FIFO queue; Publish appends to the queue of each subscribed
// node and does not wait for their handlers. The handler of a node is
// therefore never called concurrently with itself. Payloads are not copied:
// every node receives the very slice given to Publish.
//
// The delivery goroutine also calls the function given to Notify, in order
// with the messages: an EventDown is reported after the messages queued before
// the partition and before anything received after the heal.
//
// # Back-pressure
//
// A node's queue is bounded, by default to DefaultQueueMessages (4096)
// messages and DefaultQueueBytes (16 MiB) of payload; Bus.SetQueueLimit
// changes the bounds per node. The bound counts every message meant for the
// node that its handler has not returned from, including those its delivery
// goroutine has already taken from the queue, so it bounds the node's memory.
// A single message larger than the byte bound is accepted by an empty queue.
//
// A Publish that finds the queue of a subscribed node full waits, within its
// context, until there is room, then hands the message to every subscriber:
// a message reaches all of them or none. A publisher faster than a node's
// handler is thus slowed to its pace instead of making its queue grow without
// bound, and so is what it sends the other subscribers of that channel. When
// the context ends first, Publish returns an error wrapping ctx.Err() and the
// message reached no node; when the publisher is closed, one wrapping
// backplane.ErrClosed. A subscriber that is closed, partitioned or
// unsubscribed meanwhile is skipped. Publishes that run concurrently may each
// append after finding room, so a queue can exceed its bounds by one message
// per concurrent Publish. Waiting publishers are woken when the queue has
// drained to three quarters of its bounds. NodeStats reports the queue
// (Queued, PeakQueued), how often publishers waited (Waits) and gave up
// (Abandoned). Events for Notify do not count in the bounds, and a
// partitioned node queues nothing. A handler must not publish: it could wait
// for room in its own queue, which only its returning makes.
//
// # Logs and resume
//
// A bus can keep a bounded log of every channel, as the Redis Streams
// backend does, so that an application can test its clients' resume
// (wshub's wshub_since) without Redis. The logs are off by default: a hub
// made without a backplane runs on a private bus, and keeping messages it
// will never replay would cost memory, and the positions framing would
// change, for every such hub. Turn them on per bus:
//
//	bus.SetLogLimit(1000, 5*time.Minute) // per channel: the newest 1000 messages, none older than 5 minutes (0: no age bound)
//	bus.DropLog("t:room")                // t:room's log is lost: resuming clients get "!not-recovered t:room"
//	bus.DropLogs()                       // every log is lost, as on a Redis restart without persistence
//	bus.SetLogLimit(0, 0)                // logs off again (and dropped)
//
// While the bus keeps logs, every message a node delivers carries its
// offset (backplane.Message.Offset), "<epoch>:<position>", both 16
// lowercase hexadecimal digits, so that the positions of one epoch compare
// in publish order as strings; and Node.Read (backplane.Log) reads a
// channel's log back by offset. Every message published to a channel is
// logged, whether or not a node holds the channel, and the offsets of a
// channel grow in the order in which every node receives its messages:
// publishes to one channel are serialised while the bus keeps logs.
//
// Each channel's log has an epoch of its own, which changes whenever the log
// is dropped: by DropLog, DropLogs or SetLogLimit(0, 0), or once all its
// messages are older than the age bound (the channel's next message then
// starts a new epoch). Epochs are also unique to their bus, so an offset
// kept from another bus is of another epoch. Read semantics are those of
// the Redis Streams backend: an offset of another epoch, or whose message
// retention dropped, is answered with backplane.ErrNotRetained; a malformed
// offset, or one after the log's last message, with
// backplane.ErrInvalidOffset; an empty offset reads from the oldest
// message retained. While the bus keeps no logs, Read returns
// backplane.ErrNotRetained, as the Redis pub/sub mode does.
//
// A log costs about 200 bytes per channel (and its name) and, per retained
// message, up to 64 bytes plus its payload, which it keeps (payloads are not
// copied). The logs of channels whose messages have all aged out are freed as other
// messages are published. Faults that drop deliveries (Partition,
// SetDropRate) do not drop messages from the logs, and a healed node does
// not catch up from them: it reports a gap, and resuming clients recover
// from the log.
//
// # Presence
//
// The bus keeps one presence store (backplane.Presence) shared by its nodes,
// exact and in-process: each instance's entries, and per key a map of its
// members with their sessions summed across instances, so that
// PresenceCount is O(1), and a sorted structure of their names (chunks of
// at most 512), so that a page of PresenceMembers costs O(log n + limit)
// and a join or leave O(log n) plus a short move. Every instance has a
// lease on the bus's monotonic clock: it is taken for dead once it was not
// refreshed for the time to live, DefaultPresenceTTL (10 s) unless
// Bus.SetPresenceTTL changed it, and RefreshPresence asks for the next
// refresh after a third of it. The next refresh of any live instance
// removes the dead instances' entries and reports what that changed; the
// dead instance's own refresh reports Lost and removes nothing, leaving
// that to the first refresh of its successor. The bus remembers the name of
// every dead instance (a few dozen bytes each) so that it stays dead.
//
// A partitioned node's presence calls, reads included, fail with
// backplane.ErrUnavailable: its instances are not refreshed, the other
// nodes remove their entries once the time to live has passed, and after
// Heal their next refresh reports Lost, as a node cut off from Redis for
// longer than the time to live finds. Closing a node does not remove its
// instances' entries; they expire. Bus.DropPresence loses everything at
// once, as a Redis restarted without persistence.
//
//	bus.SetPresenceTTL(300 * time.Millisecond) // short, for tests of expiry
//	bus.Partition("b")                         // b's instances are removed by the others' refreshes after 300ms
//	bus.Heal("b")                              // b's old instance reports Lost: its hub starts a new one
//
// # URL
//
// The package registers the scheme "memory" with backplane.Register.
// backplane.Open(ctx, "memory://") returns a node on a new private Bus: a
// single-node cluster. A shared bus cannot be named in a URL because that would
// need global state; make a Bus and its nodes in code instead.
package memory
