package wshub

import (
	"context"
	"net/http/httptest"
	"sort"
	"testing"
	"time"

	"github.com/coder/websocket"
	goredis "github.com/redis/go-redis/v9"

	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/backplane/memory"
	wsredis "github.com/wshub/wshub/backplane/redis"
	"github.com/wshub/wshub/internal/redistest"
)

// BenchmarkJoinAcknowledged measures Hub.Join with Acknowledged: a third
// node joins a user with a session on each of two other nodes to a topic
// it alternately joins and leaves, and waits for both to confirm. It
// reports the p50 and p99 of a call in milliseconds, on memory and on a
// real redis-server in both modes.
func BenchmarkJoinAcknowledged(b *testing.B) {
	b.Run("backplane=memory", func(b *testing.B) {
		bus := memory.NewBus()
		benchJoinAck(b, func(name string) *Hub {
			node, err := bus.NewNode(name)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = node.Close() })
			return benchAckHub(b, name, node)
		})
	})
	srv := redistest.Start(b)
	for _, m := range []struct {
		mode string
		mk   redisBackplane
	}{{"pubsub", redisPubSub(wsredis.Options{})}, {"streams", redisStreams(wsredis.StreamsOptions{})}} {
		b.Run("backplane=redis-"+m.mode, func(b *testing.B) {
			prefix := "ack-" + randomHex() + ":"
			benchJoinAck(b, func(name string) *Hub {
				client := goredis.NewClient(&goredis.Options{Addr: srv.Addr()})
				b.Cleanup(func() { _ = client.Close() })
				bp, _, err := m.mk(client, prefix)
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { _ = bp.Close() })
				return benchAckHub(b, name, bp)
			})
		})
	}
}

// benchAckHub starts a hub named name on bp, closed with the benchmark.
func benchAckHub(b *testing.B, name string, bp backplane.Backplane) *Hub {
	b.Helper()
	h, err := New(&Options{NodeID: name, Backplane: bp, Logger: quiet, Authenticate: userFromQuery})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = h.Close(context.Background()) })
	return h
}

// benchDial connects a client as user to srv and reads until the
// benchmark ends.
func benchDial(b *testing.B, srv *httptest.Server, user string) {
	b.Helper()
	conn, _, err := websocket.Dial(context.Background(), wsURL(srv)+"/ws?user="+user, nil)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if _, _, err := conn.Read(context.Background()); err != nil {
				return
			}
		}
	}()
	b.Cleanup(func() { _ = conn.CloseNow(); <-done })
}

func benchJoinAck(b *testing.B, newHub func(name string) *Hub) {
	hubs := []*Hub{newHub("a"), newHub("b"), newHub("c")}
	for _, h := range hubs[:2] {
		srv := httptest.NewServer(h)
		b.Cleanup(srv.Close)
		benchDial(b, srv, "alice")
	}
	ctx := context.Background()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if n, _ := hubs[2].Online(ctx, "alice"); n == 2 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("alice's sessions are not in presence")
		}
		time.Sleep(time.Millisecond)
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		var err error
		if i%2 == 0 {
			err = hubs[2].Join(ctx, "alice", "news", Acknowledged())
		} else {
			err = hubs[2].Leave(ctx, "alice", "news", Acknowledged())
		}
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}
