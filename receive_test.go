package wshub

import (
	"bytes"
	"net/http/httptest"
	"strings"
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
	set := make(map[*Session]struct{})
	for i := 0; i < 3; i++ {
		s := h.newSession(httptest.NewRequest("GET", "/ws", nil), "u")
		s.framing.positions = true
		set[s] = struct{}{}
		t.Cleanup(func() { s.cancel(); s.stopHubLink() })
	}
	d := delivery{msg: outMsg{typ: 1, data: []byte(strings.Repeat("p", 100))}, channel: "t:room", off: "e:1"}
	h.fanOut(func(_ string, fn func(*Session)) {
		for s := range set {
			fn(s)
		}
	}, "room", &d, "")
	var first []byte
	for s := range set {
		s.mu.Lock()
		require.Len(t, s.q.msgs, 1)
		data := s.q.msgs[0].data
		s.mu.Unlock()
		assert.Equal(t, "e:1 t:room\n"+strings.Repeat("p", 100), string(data))
		if first == nil {
			first = data
		}
		assert.Same(t, &first[0], &data[0], "every recipient queues the same bytes")
	}
}
