package wshub

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/wshub/wshub/internal/envelope"
)

// JoinOption changes how Hub.Join and Hub.Leave apply.
type JoinOption func(*joinOptions)

type joinOptions struct {
	ack bool
}

// Acknowledged makes Hub.Join and Hub.Leave wait until every node that
// holds a session of the user, per the presence record, has applied the
// request and, for a Join, confirmed its subscription to the topic, so
// that a broadcast made after the call returns reaches every session the
// user had. When ctx ends first, the error wraps ErrNotAcknowledged and
// ctx.Err() and is an *AckError naming the nodes that did not answer. It
// needs a backplane that keeps presence (see ErrNoPresence).
//
// A node whose sessions of the user all end meanwhile still answers; one
// that is killed, or runs a version of wshub without acknowledgements,
// does not.
func Acknowledged() JoinOption {
	return func(o *joinOptions) { o.ack = true }
}

// AckError is the error of an acknowledged Join or Leave that some nodes
// did not acknowledge before its context ended.
type AckError struct {
	Op    string   // "join" or "leave"
	Nodes []string // the nodes that did not answer, sorted
	Err   error    // why the wait ended: the context's error
}

// Error says which nodes did not answer.
func (e *AckError) Error() string {
	return fmt.Sprintf("wshub: %s not acknowledged by nodes %s: %v", e.Op, strings.Join(e.Nodes, ", "), e.Err)
}

// Unwrap returns ErrNotAcknowledged and the context's error.
func (e *AckError) Unwrap() []error { return []error{ErrNotAcknowledged, e.Err} }

// acks are the acknowledgements this node waits for, by token.
type acks struct {
	mu      sync.Mutex
	waiting map[string]*ackWait
	// answering counts the goroutines answering other nodes' requests;
	// Close waits for them.
	answering sync.WaitGroup
}

type ackWait struct {
	missing map[string]bool // nodes that have not answered
	failed  []string        // nodes that answered they could not confirm
	done    chan struct{}   // closed when missing is empty
}

// maxAckToken bounds the token of an acknowledgement.
const maxAckToken = 32

// controlAck publishes op for userID and topic to every node holding the
// user and waits for each to acknowledge it.
func (h *Hub) controlAck(ctx context.Context, op envelope.Op, userID, topic string) error {
	name := "join"
	if op == envelope.OpLeaveAck {
		name = "leave"
	}
	nodes, err := h.holders(ctx, userID)
	if err != nil {
		return fmt.Errorf("wshub: %s: %w", name, err)
	}
	if len(nodes) == 0 {
		return nil // the user has no session anywhere
	}
	// The answers come to this node's inbox.
	h.inboxOnce.Do(func() {
		h.interest.first(h.inbox)
		h.inboxWanted.Store(true)
	})
	if err := h.interest.ready(h.inbox).wait(ctx); err != nil {
		return fmt.Errorf("wshub: %s: subscribe inbox: %w", name, err)
	}
	token := strconv.FormatUint(h.seq.Add(1), 36)
	w := &ackWait{missing: make(map[string]bool, len(nodes)), done: make(chan struct{})}
	for _, n := range nodes {
		w.missing[n] = true
	}
	h.acks.mu.Lock()
	if h.acks.waiting == nil {
		h.acks.waiting = make(map[string]*ackWait)
	}
	h.acks.waiting[token] = w
	h.acks.mu.Unlock()
	defer func() {
		h.acks.mu.Lock()
		delete(h.acks.waiting, token)
		h.acks.mu.Unlock()
	}()
	reply := []byte(h.opts.NodeID + " " + token)
	for _, n := range nodes {
		e := &envelope.Envelope{Op: op, Target: userID, Arg: topic, Payload: reply}
		if err := h.publish(ctx, nodePrefix+n, e); err != nil {
			return fmt.Errorf("wshub: %s: %w", name, err)
		}
	}
	select {
	case <-w.done:
	case <-ctx.Done():
		h.acks.mu.Lock()
		missing := make([]string, 0, len(w.missing))
		for n := range w.missing {
			missing = append(missing, n)
		}
		h.acks.mu.Unlock()
		sort.Strings(missing)
		return &AckError{Op: name, Nodes: missing, Err: ctx.Err()}
	}
	if len(w.failed) > 0 {
		sort.Strings(w.failed)
		return fmt.Errorf("wshub: %s: nodes %s could not confirm the subscription: %w", name, strings.Join(w.failed, ", "), ErrNotAcknowledged)
	}
	return nil
}

// acknowledge applies an OpJoinAck or OpLeaveAck that arrived in this
// node's inbox and, once the topic's subscription is confirmed (for a
// join), answers the node in its payload. It returns at once: the wait
// runs on a goroutine of the hub's.
func (h *Hub) acknowledge(e *envelope.Envelope) {
	node, token, ok := strings.Cut(string(e.Payload), " ")
	if !ok || checkName(node, ErrInvalidOptions) != nil || strings.Contains(node, ".") ||
		token == "" || len(token) > maxAckToken || checkName(e.Arg, ErrInvalidTopic) != nil {
		h.stats.malformed.Add(1)
		return
	}
	f := h.reg.joinUser(e.Target, e.Arg, e.Op == envelope.OpJoinAck)
	h.mu.RLock()
	closed := h.closed
	if !closed {
		h.acks.answering.Add(1) // Close waits for the answer
	}
	h.mu.RUnlock()
	if closed {
		return
	}
	go func() {
		defer h.acks.answering.Done()
		ctx, cancel := context.WithTimeout(h.ctx, h.opts.SubscribeTimeout)
		defer cancel()
		var code uint64
		if err := f.wait(ctx); err != nil {
			code = 1
		}
		ans := &envelope.Envelope{Op: envelope.OpAck, Target: token, Arg: h.opts.NodeID, Code: code}
		ch := nodePrefix + node
		if err := h.bp.Publish(ctx, ch, h.encode(ch, ans)); err != nil {
			h.log.Debug("wshub: acknowledgement not sent", "peer", node, "err", err)
		}
	}()
}

// acked records an OpAck that arrived in this node's inbox.
func (h *Hub) acked(e *envelope.Envelope) {
	h.acks.mu.Lock()
	defer h.acks.mu.Unlock()
	w := h.acks.waiting[e.Target]
	if w == nil || !w.missing[e.Arg] {
		return // late, duplicate, or not asked of that node
	}
	delete(w.missing, e.Arg)
	if e.Code != 0 {
		w.failed = append(w.failed, e.Arg)
	}
	if len(w.missing) == 0 {
		close(w.done)
	}
}
