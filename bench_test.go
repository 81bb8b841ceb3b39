package wshub

import (
	"context"
	"fmt"
	"github.com/wshub/wshub/backplane"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/coder/websocket"

	"github.com/wshub/wshub/backplane/memory"
	"github.com/wshub/wshub/internal/envelope"
)

// benchHub returns a hub with n sessions in topic "t" that have no socket,
// so that only the hub's own fan-out work is measured. With keys, the hub
// signs and verifies with them (Options.SigningKeys).
func benchHub(b *testing.B, n int, keys ...[]byte) (*Hub, []*Session) {
	h, err := New(&Options{Logger: quiet, SendQueueLen: 1 << 20, SendQueueBytes: 1 << 30, SigningKeys: keys})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = h.Close(bg) })
	r := httptest.NewRequest("GET", "/", nil)
	sessions := make([]*Session, n)
	for i := range sessions {
		s := h.newSession(r, fmt.Sprint("user", i))
		if err := h.register(bg, s); err != nil {
			b.Fatal(err)
		}
		if err := s.Join(bg, "t"); err != nil {
			b.Fatal(err)
		}
		sessions[i] = s
	}
	b.Cleanup(func() {
		for _, s := range sessions {
			h.reg.remove(s)
		}
	})
	return h, sessions
}

func resetQueues(sessions []*Session) {
	for _, s := range sessions {
		s.mu.Lock()
		clear(s.q.msgs)
		s.q.msgs, s.q.bytes = s.q.msgs[:0], 0
		s.mu.Unlock()
	}
}

// BenchmarkFanOut measures a broadcast received from the backplane and
// queued to 1,000 local sessions: decode once, then one queue append per
// recipient, with no allocation per recipient.
func BenchmarkFanOut(b *testing.B) { benchFanOut(b) }

// BenchmarkFanOutSigned is BenchmarkFanOut with SigningKeys: the
// signature is verified once per broadcast, whatever the recipients.
func BenchmarkFanOutSigned(b *testing.B) { benchFanOut(b, signKey1) }

func benchFanOut(b *testing.B, keys ...[]byte) {
	h, sessions := benchHub(b, 1000, keys...)
	payload := h.encode("t:t", &envelope.Envelope{Op: envelope.OpTopic, Target: "t", Payload: make([]byte, 64)})
	for i := 0; i < 256; i++ { // grow the queues once, outside the measurement
		h.receive(backplane.Message{Channel: "t:t", Payload: payload})
	}
	resetQueues(sessions)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%256 == 255 {
			b.StopTimer()
			resetQueues(sessions)
			b.StartTimer()
		}
		h.receive(backplane.Message{Channel: "t:t", Payload: payload})
	}
	b.ReportMetric(float64(b.N*len(sessions))/b.Elapsed().Seconds(), "deliveries/s")
}

// BenchmarkSendLocalUser measures Send to a user on this node through the
// memory backplane, up to the session's queue.
func BenchmarkSendLocalUser(b *testing.B) { benchSendLocalUser(b) }

// BenchmarkSendLocalUserSigned is BenchmarkSendLocalUser with SigningKeys:
// one signature and one verification per message.
func BenchmarkSendLocalUserSigned(b *testing.B) { benchSendLocalUser(b, signKey1) }

func benchSendLocalUser(b *testing.B, keys ...[]byte) {
	h, sessions := benchHub(b, 1, keys...)
	msg := Text(strings.Repeat("x", 64))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%4096 == 4095 {
			b.StopTimer()
			resetQueues(sessions)
			b.StartTimer()
		}
		if err := h.Send(bg, "user0", msg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBroadcastSockets measures a broadcast to 100 real WebSocket
// clients on loopback, from Broadcast to the last client's read.
func BenchmarkBroadcastSockets(b *testing.B) {
	const clients = 100
	h, err := New(&Options{
		Logger: quiet,
		OnConnect: func(ctx context.Context, s *Session) error {
			return s.Join(ctx, "t")
		},
		SendQueueLen: 1 << 16,
	})
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	defer h.Close(bg)
	url := wsURL(srv)
	var wg sync.WaitGroup
	for i := 0; i < clients; i++ {
		conn, _, err := websocket.Dial(bg, url, nil)
		if err != nil {
			b.Fatal(err)
		}
		defer conn.CloseNow()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < b.N; j++ {
				if _, _, err := conn.Read(bg); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	// OnConnect may still be joining the last clients.
	for {
		n := h.reg.count(h.reg.topics, "t")
		if n == clients && h.interest.ready(topicPrefix+"t") == nil {
			break
		}
		runtime.Gosched()
	}
	msg := Text(strings.Repeat("x", 64))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := h.Broadcast(bg, "t", msg); err != nil {
			b.Fatal(err)
		}
	}
	wg.Wait()
	b.ReportMetric(float64(b.N*clients)/b.Elapsed().Seconds(), "deliveries/s")
}

// BenchmarkInterest measures the interest manager behind Join and Leave:
// "held" takes and drops a reference to a channel the node already holds
// (no backplane call); "new" subscribes a channel the node did not hold,
// waits for the batched Subscribe on the memory backplane, and releases it.
func BenchmarkInterest(b *testing.B) {
	node, err := memory.NewBus().NewNode("n")
	if err != nil {
		b.Fatal(err)
	}
	if err := node.Start(func(backplane.Message) {}); err != nil {
		b.Fatal(err)
	}
	defer node.Close()
	im := newInterest(node, quiet, waitFor)
	defer im.close()
	if err := im.first("t:held").wait(bg); err != nil {
		b.Fatal(err)
	}
	b.Run("held", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if err := im.ready("t:held").wait(bg); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("new", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			ch := "t:" + strconv.Itoa(i)
			if err := im.first(ch).wait(bg); err != nil {
				b.Fatal(err)
			}
			im.last(ch)
		}
	})
}
