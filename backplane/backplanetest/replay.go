package backplanetest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/backplane"
)

// The Replay cases run when Features.Replay is set. Their nodes implement
// backplane.Log, so that every message arrives with its offset; the cases
// compare those offsets with what Read returns.

// logMsg is one message a node was handed.
type logMsg struct {
	channel string
	offset  string
	payload []byte
}

// logRecorder is a Handler that keeps every message it is given
// and lets a test wait for them.
type logRecorder struct {
	mu   sync.Mutex
	msgs []logMsg
	// changed is closed and replaced whenever msgs grows.
	changed chan struct{}
}

func newLogRecorder() *logRecorder {
	return &logRecorder{changed: make(chan struct{})}
}

// handle is the backplane.Handler.
func (r *logRecorder) handle(m backplane.Message) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, logMsg{channel: m.Channel, offset: m.Offset, payload: m.Payload})
	close(r.changed)
	r.changed = make(chan struct{})
}

// on returns the messages received on channel so far, in arrival order.
func (r *logRecorder) on(channel string) []logMsg {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []logMsg
	for _, m := range r.msgs {
		if m.channel == channel {
			out = append(out, m)
		}
	}
	return out
}

// waitCount waits until at least k messages arrived on channel at n, and
// fails the case if they do not within waitTimeout.
func (r *logRecorder) waitCount(t *testing.T, n *logNode, channel string, k int) {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		have := 0
		for _, m := range r.msgs {
			if m.channel == channel {
				have++
			}
		}
		changed := r.changed
		r.mu.Unlock()
		if have >= k {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			require.FailNowf(t, "timed out", "waited %v for %d messages on %q at %s; %d received",
				waitTimeout, k, channel, n.name, have)
		}
	}
}

// logNode is a started node of a backend that keeps logs.
type logNode struct {
	backplane.Backplane
	log  backplane.Log
	name string
	rec  *logRecorder
}

// asLog returns bp as a backplane.Log, failing the case if it is not one.
func asLog(t *testing.T, bp backplane.Backplane) backplane.Log {
	t.Helper()
	lg, ok := bp.(backplane.Log)
	require.Truef(t, ok, "Features.Replay is set but %T does not implement backplane.Log", bp)
	return lg
}

// logNode makes a node and starts it with a fresh recorder.
func (e *env) logNode() *logNode {
	e.t.Helper()
	e.count++
	bp := e.makeRaw()
	n := &logNode{Backplane: bp, log: asLog(e.t, bp), name: fmt.Sprintf("node %d", e.count), rec: newLogRecorder()}
	require.NoError(e.t, n.Start(n.rec.handle), "Start %s", n.name)
	return n
}

// logNodes makes k started nodes of a backend that keeps logs.
func (e *env) logNodes(k int) []*logNode {
	e.t.Helper()
	ns := make([]*logNode, k)
	for i := range ns {
		ns[i] = e.logNode()
	}
	return ns
}

// readPages reads channel after offset with Read, limit messages at a
// time, until a page holds fewer than limit. It fails the case on an error,
// on a page longer than limit, and when more than most messages come back
// (a backend that never stops).
func (e *env) readPages(t *testing.T, n *logNode, channel, offset string, limit, most int) []backplane.Entry {
	t.Helper()
	var all []backplane.Entry
	for {
		page, err := n.log.Read(e.ctx, channel, offset, limit)
		require.NoError(t, err, "%s: Read(%q, %q, %d)", n.name, channel, offset, limit)
		require.LessOrEqual(t, len(page), limit, "%s: Read(%q, %q, %d) returned more than limit", n.name, channel, offset, limit)
		all = append(all, page...)
		require.LessOrEqual(t, len(all), most, "%s: reading %q from %q by %d: more messages than were published", n.name, channel, offset, limit)
		if len(page) < limit {
			return all
		}
		offset = page[len(page)-1].Offset
	}
}

// assertEntries checks that got holds exactly want, in order, with the
// offsets the handler was given.
func assertEntries(t *testing.T, want []logMsg, got []backplane.Entry, what string) {
	t.Helper()
	w := make([]string, len(want))
	for i, m := range want {
		w[i] = m.offset + " " + string(m.payload)
	}
	g := make([]string, len(got))
	for i, m := range got {
		g[i] = m.Offset + " " + string(m.Payload)
	}
	assert.Equal(t, w, g, "%s: offsets and payloads", what)
}

// publishSeq publishes k numbered messages of publisher p from n on
// channel, one after the other, and fails the case on error.
func (e *env) publishSeq(n *logNode, channel, p string, k int) {
	e.t.Helper()
	for i := range k {
		require.NoError(e.t, n.Publish(e.ctx, channel, seqPayload(p, i)), "%s: Publish %d to %q", n.name, i, channel)
	}
}

// checkLog checks that msgs are the k messages of publisher p in order,
// each with a non-empty offset greater (as a string) than the one before.
func checkLog(t *testing.T, n *logNode, channel, p string, msgs []logMsg, k int) {
	t.Helper()
	want := make([]string, k)
	for i := range want {
		want[i] = string(seqPayload(p, i))
	}
	got := make([]string, len(msgs))
	for i, m := range msgs {
		got[i] = string(m.payload)
	}
	require.Equal(t, want, got, "%s: messages on %q", n.name, channel)
	for i, m := range msgs {
		require.NotEmpty(t, m.offset, "%s: offset of message %d on %q", n.name, i, channel)
		if i > 0 {
			require.Greater(t, m.offset, msgs[i-1].offset, "%s: offset of message %d on %q is not after the one before", n.name, i, channel)
		}
	}
}

// replayCount is how many messages the Replay cases publish on a channel
// that they read back whole: at most Features.Retained.
func (e *env) replayCount() int {
	return min(e.f.Retained, 100)
}

// testReplayOffsets: every message reaches the handler with
// a non-empty offset; the offsets of a channel grow (as strings) in the
// order one publisher published; every node sees the same offset for the
// same message.
func testReplayOffsets(t *testing.T, e *env) {
	const k = 200
	chs := []string{"t:offsets-1", "t:offsets-2"}
	ns := e.logNodes(3)
	for _, n := range ns {
		require.NoError(t, n.Subscribe(e.ctx, chs...), "%s: Subscribe", n.name)
	}
	// One publisher, the two channels interleaved.
	for i := range k {
		for _, ch := range chs {
			require.NoError(t, ns[0].Publish(e.ctx, ch, seqPayload("a", i)), "Publish %d to %q", i, ch)
		}
	}
	for _, ch := range chs {
		var first []logMsg
		for _, n := range ns {
			n.rec.waitCount(t, n, ch, k)
			msgs := n.rec.on(ch)
			checkLog(t, n, ch, "a", msgs, k)
			if first == nil {
				first = msgs
				continue
			}
			for i := range msgs {
				require.Equal(t, first[i].offset, msgs[i].offset,
					"offset of message %d on %q: %s and %s differ", i, ch, ns[0].name, n.name)
			}
		}
	}
}

// testReplayReadAfter: Read after an offset returns exactly the messages
// published after it, in order and with their offsets, page by page; Read
// after the last offset returns nothing.
func testReplayReadAfter(t *testing.T, e *env) {
	const ch = "t:read-after"
	k := e.replayCount()
	ns := e.logNodes(3)
	a, b, reader := ns[0], ns[1], ns[2] // the reader is not subscribed
	e.subscribe2(b, ch)
	e.publishSeq(a, ch, "a", k)
	b.rec.waitCount(t, b, ch, k)
	msgs := b.rec.on(ch)
	checkLog(t, b, ch, "a", msgs, k)

	// Pages of 1 and of 3 messages, and all at once.
	for _, from := range []int{0, k / 2, k - 2} {
		if from < 0 {
			continue
		}
		want := msgs[from+1:]
		for _, limit := range []int{1, 3, len(want) + 1} {
			got := e.readPages(t, reader, ch, msgs[from].offset, limit, k)
			assertEntries(t, want, got, fmt.Sprintf("%s: Read after message %d by %d", reader.name, from, limit))
		}
	}
	last := msgs[k-1].offset
	got, err := reader.log.Read(e.ctx, ch, last, 10)
	require.NoError(t, err, "Read after the last offset")
	assert.Empty(t, got, "Read after the last offset")

	// The publisher's own node reads the same log.
	got = e.readPages(t, a, ch, msgs[0].offset, k, k)
	assertEntries(t, msgs[1:], got, fmt.Sprintf("%s: Read after the first message", a.name))
}

// subscribe2 subscribes a logNode to channels and fails the case on error.
func (e *env) subscribe2(n *logNode, channels ...string) {
	e.t.Helper()
	require.NoError(e.t, n.Subscribe(e.ctx, channels...), "%s: Subscribe %q", n.name, channels)
}

// testReplayReadFromStart: Read with an empty offset returns the channel's
// log from the oldest message retained; a channel never published to has
// an empty log.
func testReplayReadFromStart(t *testing.T, e *env) {
	const ch = "t:read-start"
	k := e.replayCount()
	ns := e.logNodes(2)
	a, b := ns[0], ns[1]

	got, err := a.log.Read(e.ctx, "t:never-published", "", 10)
	require.NoError(t, err, "Read of a channel never published to")
	assert.Empty(t, got, "Read of a channel never published to")

	e.subscribe2(b, ch)
	e.publishSeq(a, ch, "a", k)
	b.rec.waitCount(t, b, ch, k)
	msgs := b.rec.on(ch)
	checkLog(t, b, ch, "a", msgs, k)

	got = e.readPages(t, a, ch, "", k+1, k)
	assertEntries(t, msgs, got, fmt.Sprintf("%s: Read from the start in one page", a.name))
	got = e.readPages(t, b, ch, "", 3, k)
	assertEntries(t, msgs, got, fmt.Sprintf("%s: Read from the start by 3", b.name))
}

// testReplayNotRetained: after far more messages than the backend retains,
// Read after the first one fails with ErrNotRetained, while Read from the
// start returns the newest messages, at least Retained of them, without a
// hole, and Read after the oldest of those works.
func testReplayNotRetained(t *testing.T, e *env) {
	const ch = "t:not-retained"
	k := 20*e.f.Retained + 200
	ns := e.logNodes(2)
	a, b := ns[0], ns[1]
	e.subscribe2(b, ch)
	e.publishSeq(a, ch, "a", k)
	b.rec.waitCount(t, b, ch, k)
	msgs := b.rec.on(ch)
	checkLog(t, b, ch, "a", msgs, k)

	_, err := a.log.Read(e.ctx, ch, msgs[0].offset, 10)
	require.ErrorIs(t, err, backplane.ErrNotRetained, "Read after the first of %d messages, with Retained %d", k, e.f.Retained)

	kept := e.readPages(t, a, ch, "", 100, k)
	require.GreaterOrEqual(t, len(kept), e.f.Retained, "Read from the start: fewer messages than Features.Retained")
	require.Less(t, len(kept), k, "Read from the start returned every message, yet Read after the first one failed")
	assertEntries(t, msgs[k-len(kept):], kept, "Read from the start: the newest messages")

	got := e.readPages(t, b, ch, kept[0].Offset, 100, k)
	assertEntries(t, msgs[k-len(kept)+1:], got, "Read after the oldest message retained")
}

// testReplayInvalidOffset: Read with an offset the backend did not hand out
// fails with ErrInvalidOffset, on a channel with messages and on one
// without.
func testReplayInvalidOffset(t *testing.T, e *env) {
	const ch = "t:invalid-offset"
	a := e.logNode()
	e.subscribe2(a, ch)
	require.NoError(t, a.Publish(e.ctx, ch, []byte("x")), "Publish")
	a.rec.waitCount(t, a, ch, 1)
	for _, c := range []string{ch, "t:invalid-offset-empty"} {
		for _, off := range []string{"garbage", "not an offset", "-", "\x00\xff\x01"} {
			_, err := a.log.Read(e.ctx, c, off, 10)
			assert.ErrorIs(t, err, backplane.ErrInvalidOffset, "Read(%q, %q)", c, off)
		}
	}
	_, err := a.log.Read(e.ctx, "", "", 10)
	assert.ErrorIs(t, err, backplane.ErrInvalidChannel, "Read of an empty channel name")
	// The node still works.
	got, err := a.log.Read(e.ctx, ch, "", 10)
	require.NoError(t, err, "Read from the start")
	assertEntries(t, a.rec.on(ch), got, "Read from the start")
}

// testReplayClosed: after Close, Read fails with ErrClosed.
func testReplayClosed(t *testing.T, e *env) {
	const ch = "t:replay-closed"
	a := e.logNode()
	e.subscribe2(a, ch)
	require.NoError(t, a.Publish(e.ctx, ch, []byte("x")), "Publish")
	a.rec.waitCount(t, a, ch, 1)
	off := a.rec.on(ch)[0].offset
	require.NoError(t, a.Close(), "Close")
	assertReadClosed(t, e.ctx, a.log, ch, off)

	bp := e.makeRaw()
	require.NoError(t, bp.Close(), "Close before Start")
	lg := asLog(t, bp)
	assertReadClosed(t, e.ctx, lg, ch, off)
}

func assertReadClosed(t *testing.T, ctx context.Context, lg backplane.Log, ch, off string) {
	t.Helper()
	_, err := lg.Read(ctx, ch, "", 10)
	assert.ErrorIs(t, err, backplane.ErrClosed, "Read from the start after Close")
	_, err = lg.Read(ctx, ch, off, 10)
	assert.ErrorIs(t, err, backplane.ErrClosed, "Read after an offset after Close")
}
