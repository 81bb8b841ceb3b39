package wshub

import (
	"bytes"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/internal/envelope"
)

// A message from the backplane that no hub of this configuration would
// send, such as one larger than MaxMessageSize, is counted and dropped
// rather than handed to every member of a topic, whose queues it would
// overflow.
func TestOversizedBackplaneMessageIsDropped(t *testing.T) {
	c := newCluster(t, 1, func(i int, o *Options) {
		o.MaxMessageSize = 1 << 10
		o.SendQueueBytes = 4 << 10
	})
	n := c.nodes[0]
	var members []*client
	for _, u := range []string{"a", "b", "c"} {
		cl := dial(t, n, u)
		require.NoError(t, n.sessions(u)[0].Join(bg, "room"))
		members = append(members, cl)
	}
	outsider, err := c.bus.NewNode("outsider")
	require.NoError(t, err)
	t.Cleanup(func() { _ = outsider.Close() })
	big := envelope.Envelope{Op: envelope.OpTopic, Target: "room", Payload: bytes.Repeat([]byte("x"), 8<<10)}
	require.NoError(t, outsider.Publish(bg, topicPrefix+"room", big.Encode()))
	require.NoError(t, n.hub.Broadcast(bg, "room", Text("after")))
	for _, cl := range members {
		assert.Equal(t, "after", cl.nextText(), "the oversized message was not delivered, and nobody was closed")
	}
	require.Eventually(t, func() bool { return n.hub.Stats().Malformed == 1 }, waitFor, time.Millisecond)
	assert.Zero(t, n.hub.Stats().SlowClosed)
}

// The positions framing of a broadcast is built once and shared by every
// recipient, like the plain message.
func TestPositionsFramingIsSharedByRecipients(t *testing.T) {
	h, err := New(&Options{Logger: quiet})
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.Close(bg) })
	var sessions []*Session
	for i := 0; i < 3; i++ {
		s := h.newSession(httptest.NewRequest("GET", "/ws", nil), "u")
		s.framing.positions = true
		_, err := h.reg.add(s)
		require.NoError(t, err)
		_, _, err = h.reg.join(s, "room")
		require.NoError(t, err)
		sessions = append(sessions, s)
		t.Cleanup(func() { h.reg.remove(s); s.cancel(); s.stopHubLink() })
	}
	d := delivery{msg: outMsg{typ: 1, data: []byte(strings.Repeat("p", 100))}, channel: "t:room", off: "e:1"}
	require.EqualValues(t, 3, h.reg.deliver(h.reg.topics, "room", &d, ""))
	var first []byte
	for _, s := range sessions {
		s.mu.Lock()
		require.Len(t, s.q.msgs, 1)
		m := s.q.msgs[0]
		s.mu.Unlock()
		require.Equal(t, frameMsg, m.typ, "framed once, header and all")
		want := "e:1 t:room\n" + strings.Repeat("p", 100)
		data := m.data
		assert.Equal(t, string(appendFrameHeader(nil, 1, len(want)))+want, string(data))
		assert.Equal(t, len(want), m.size())
		if first == nil {
			first = data
		}
		assert.Same(t, &first[0], &data[0], "every recipient queues the same bytes")
	}
}

// Live messages of two channels that a session is recovering may be
// delivered at once from two backplane goroutines (Redis shards, say): the
// held-back bookkeeping is under the session's lock throughout (run with
// -race).
func TestDeliveryDuringRecoveryIsRaceFree(t *testing.T) {
	h, err := New(&Options{Logger: quiet, SendQueueLen: 1})
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.Close(bg) })
	s := h.newSession(httptest.NewRequest("GET", "/ws", nil), "a")
	t.Cleanup(func() { s.cancel(); s.stopHubLink() })
	s.framing.positions = true
	s.startResume(map[string]string{"u:a": "e:1", "t:b": "e:1"})
	var wg sync.WaitGroup
	for _, ch := range []string{"u:a", "t:b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				d := delivery{msg: outMsg{typ: 1, data: []byte("x")}, channel: ch, off: fmt.Sprintf("e:%d", i+2)}
				s.deliver(&d)
			}
		}()
	}
	wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	assert.True(t, s.rs.overflow["u:a"] && s.rs.overflow["t:b"], "both channels outgrew a queue of one and were given up")
}
