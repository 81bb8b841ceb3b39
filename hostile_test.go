package wshub

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/internal/envelope"
)

// Every attack at once on a two-node chat with the default limits: one
// user opening many sockets, a ping flood, a flood of empty continuation
// frames, a message flood relayed into the room, invalid UTF-8, and
// envelopes forged on the backplane. Each is refused or bounded, and the
// well-behaved members of the room keep getting each other's messages, in
// order, while it goes on.
func TestHostileClientsAllAtOnce(t *testing.T) {
	keys := [][]byte{[]byte("hostile-test-key-0123456789abcdef")}
	c := newCluster(t, 2, func(i int, o *Options) {
		o.SigningKeys = keys
		o.Limits.SessionsPerUser = 3
		o.OnConnect = func(ctx context.Context, s *Session) error { return s.Join(ctx, "room") }
		o.OnMessage = func(ctx context.Context, s *Session, m Message) {
			_ = s.Hub().Broadcast(ctx, "room", m, Except(s.ID()))
		}
	})
	a, b := c.nodes[0], c.nodes[1]
	const members = 4
	var good []*client
	for i := 0; i < members; i++ {
		good = append(good, dial(t, c.nodes[i%2], fmt.Sprint("member", i)))
	}
	c.waitJoined("member0", "room", true)
	c.waitJoined("member1", "room", true)

	// The attacks, each bounded in count.
	var wg sync.WaitGroup
	attack := func(f func()) { wg.Add(1); go func() { defer wg.Done(); f() }() }
	attack(func() { // one user, many sockets
		for i := 0; i < 20; i++ {
			conn, resp, err := dialAs(a, "hog")
			if err == nil {
				t.Cleanup(func() { _ = conn.CloseNow() })
				continue
			}
			if resp == nil || resp.StatusCode != http.StatusTooManyRequests {
				t.Errorf("hog's dial %d: %v (%v)", i, err, resp)
			}
		}
	})
	pinger := dialRaw(t, a.srv.Listener.Addr().String(), "pinger", nil, 2*waitFor)
	attack(func() { _, _ = pinger.conn.Write(repeatFrame(5000, true, wsOpPing, nil)) })
	fragmenter := dialRaw(t, b.srv.Listener.Addr().String(), "fragmenter", nil, 2*waitFor)
	attack(func() {
		_, _ = fragmenter.conn.Write(append(clientFrame(false, wsOpText, []byte("a")), repeatFrame(5000, false, wsOpContinuation, nil)...))
	})
	flooder := dialRaw(t, a.srv.Listener.Addr().String(), "flooder", nil, 2*waitFor)
	attack(func() { _, _ = flooder.conn.Write(repeatFrame(5000, true, wsOpText, []byte("flood"))) })
	liar := dialRaw(t, b.srv.Listener.Addr().String(), "liar", nil, 2*waitFor)
	attack(func() { _, _ = liar.conn.Write(clientFrame(true, wsOpText, []byte{0xff, 0xfe})) })
	outsider, err := c.bus.NewNode("outsider")
	require.NoError(t, err)
	t.Cleanup(func() { _ = outsider.Close() })
	attack(func() {
		forged := (&envelope.Envelope{Op: envelope.OpTopic, Target: "room", Payload: []byte("forged")}).Encode()
		kick := (&envelope.Envelope{Op: envelope.OpDisconnect, Target: "member0", Code: 4000}).Encode()
		for i := 0; i < 100; i++ {
			_ = outsider.Publish(bg, topicPrefix+"room", forged)
			_ = outsider.Publish(bg, userPrefix+"member0", kick)
		}
	})

	// Meanwhile every member says three things; every other member hears
	// each of them, in order, whatever else arrives.
	for round := 0; round < 3; round++ {
		for i, m := range good {
			require.NoError(t, m.conn.Write(bg, websocket.MessageText, []byte(fmt.Sprintf("m%d-%d", i, round))))
		}
	}
	for i, m := range good {
		want := map[int]int{} // member → next round
		for j := range good {
			if j != i {
				want[j] = 0
			}
		}
		for done := 0; done < 3*(members-1); {
			text := m.nextText()
			switch {
			case text == "flood":
				continue // the flooder's relayed messages, at its rate
			case text == "forged":
				t.Fatalf("member%d got a forged broadcast", i)
			}
			var from, round int
			_, err := fmt.Sscanf(text, "m%d-%d", &from, &round)
			require.NoError(t, err, "member%d got %q", i, text)
			require.Equal(t, want[from], round, "member%d: member%d's messages in order", i, from)
			want[from]++
			done++
		}
	}
	wg.Wait()

	// What each attack came to.
	require.Eventually(t, func() bool {
		sa, sb := a.hub.Stats(), b.hub.Stats()
		return sa.Refused+sb.Refused >= 17 && sa.RateDelayed > 0 && sb.RateDelayed > 0 &&
			sb.InvalidText == 1 && sa.Forged+sb.Forged >= 200
	}, waitFor, 10*time.Millisecond, "node A %+v\nnode B %+v", a.hub.Stats(), b.hub.Stats())
	code, _ := liar.closeStatus()
	assert.Equal(t, StatusCode(1007), code, "invalid UTF-8 closes with 1007")
	assert.Len(t, a.sessions("member0"), 1, "a forged Disconnect closed nobody")
	for _, m := range good {
		select {
		case <-m.done:
			t.Fatalf("a member's connection ended: %v", m.err)
		default:
		}
	}
}

// dialAs dials n as user, returning the response of a refused upgrade.
func dialAs(n *node, user string) (*websocket.Conn, *http.Response, error) {
	ctx, cancel := context.WithTimeout(bg, waitFor)
	defer cancel()
	return websocket.Dial(ctx, wsURL(n.srv)+"/ws?user="+url.QueryEscape(user), nil)
}
