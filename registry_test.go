package wshub

import (
	"fmt"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// transitionLog records what a registry reports.
type transitionLog struct{ events []string }

func (l *transitionLog) first(ch string) *flush { l.events = append(l.events, "+"+ch); return nil }
func (l *transitionLog) last(ch string)         { l.events = append(l.events, "-"+ch) }
func (l *transitionLog) ready(ch string) *flush { return nil }

// The registry reports a user's or topic's first session on this node and
// its last, and nothing in between: that is what keeps the backplane's
// interest equal to what the node holds.
func TestRegistryReportsFirstAndLast(t *testing.T) {
	var log transitionLog
	r := newRegistry(&log, Limits{}, new(atomic.Uint64))
	a1 := &Session{id: "n.1", userID: "alice"}
	a2 := &Session{id: "n.2", userID: "alice"}
	anon := &Session{id: "n.3"}
	for _, s := range []*Session{a1, a2, anon} {
		_, err := r.add(s)
		require.NoError(t, err)
	}
	for _, s := range []*Session{a1, a2, anon} {
		_, _, err := r.join(s, "room")
		require.NoError(t, err)
	}
	_, already, _ := r.join(a1, "room")
	assert.True(t, already)
	r.joinUser("alice", "other", true)
	assert.Equal(t, []string{"+u:alice", "+t:room", "+t:other"}, log.events)

	log.events = nil
	r.leave(anon, "room")
	r.remove(a1)
	assert.Empty(t, log.events, "alice and the room still have a session")
	r.joinUser("alice", "other", false)
	r.remove(a2)
	r.remove(a2) // twice is nothing
	assert.Equal(t, []string{"-t:other", "-u:alice", "-t:room"}, log.events)
	assert.Equal(t, 1, r.len())

	assert.Len(t, r.close(), 1)
	_, err := r.add(&Session{id: "n.4"})
	assert.ErrorIs(t, err, ErrClosed)
	_, _, err = r.join(a1, "room")
	assert.ErrorIs(t, err, ErrSessionClosed, "a removed session cannot join")
}

// A fan-out that writes to the sockets itself spreads a large topic over the
// cores: every session but the excepted one gets each message once, in
// order, framed once for all.
func TestRegistryParallelFanOut(t *testing.T) {
	h, err := New(&Options{Logger: quiet})
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.Close(bg) })
	const n = 3*fanoutChunk + 7
	var sessions []*Session
	for i := 0; i < n; i++ {
		s := h.newSession(httptest.NewRequest("GET", "/ws", nil), "")
		s.framing.positions = i%2 == 0
		_, err := h.reg.add(s)
		require.NoError(t, err)
		_, _, err = h.reg.join(s, "room")
		require.NoError(t, err)
		sessions = append(sessions, s)
		t.Cleanup(func() { h.reg.remove(s); s.cancel(); s.stopHubLink() })
	}
	for i, body := range []string{"one", "two"} {
		d := delivery{msg: outMsg{typ: 1, data: []byte(body)}, channel: "t:room", off: fmt.Sprintf("e:%d", i), through: true}
		require.EqualValues(t, n-1, h.reg.deliver(h.reg.topics, "room", &d, sessions[5].id))
	}
	for i, s := range sessions {
		s.mu.Lock()
		msgs := append([]outMsg(nil), s.q.msgs...)
		s.mu.Unlock()
		if i == 5 {
			assert.Empty(t, msgs, "the excepted session")
			continue
		}
		require.Len(t, msgs, 2)
		for j, body := range []string{"one", "two"} {
			want := body
			if s.framing.positions {
				want = fmt.Sprintf("e:%d t:room\n%s", j, body)
			}
			assert.Equal(t, frameMsg, msgs[j].typ)
			assert.Equal(t, string(appendFrameHeader(nil, 1, len(want)))+want, string(msgs[j].data))
		}
	}
}
