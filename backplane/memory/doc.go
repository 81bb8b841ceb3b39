// Package memory is an in-process backplane that simulates a whole wshub
// cluster inside one program, usually one test.
//
// A Bus is the shared message bus; each Node made by Bus.NewNode is one
// cluster member and implements backplane.Backplane and backplane.Notifier.
// Give each hub of the simulated cluster its own Node of the same Bus:
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
//	st, _ := bus.Stats("b")                // st.Delivered, st.Dropped
//
// # Delivery semantics
//
// A message published on a channel is handed to every node subscribed to that
// channel at the time of the publish, including the publisher. Nothing is lost
// while the process lives, except what a fault drops (and counts). The
// messages of one publisher on one channel arrive in the order they were
// published.
//
// Publish never waits for a handler. Each node has one delivery goroutine,
// started by Start and ended by Close, that drains an unbounded FIFO queue;
// Publish only appends to the queue of each subscribed node. The handler of a
// node is therefore never called concurrently with itself, and a slow handler
// makes its own queue grow without slowing the others. Payloads are not
// copied: every node receives the very slice given to Publish.
//
// The delivery goroutine also calls the function given to Notify, in order
// with the messages: an EventDown is reported after the messages queued before
// the partition and before anything received after the heal.
//
// # URL
//
// The package registers the scheme "memory" with backplane.Register.
// backplane.Open(ctx, "memory://") returns a node on a new private Bus: a
// single-node cluster. A shared bus cannot be named in a URL because that would
// need global state; make a Bus and its nodes in code instead.
package memory
