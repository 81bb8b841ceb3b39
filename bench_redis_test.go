package wshub

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	goredis "github.com/redis/go-redis/v9"

	wsredis "github.com/wshub/wshub/backplane/redis"
	"github.com/wshub/wshub/internal/redistest"
)

// BenchmarkRedisSend measures Send across two nodes on a real redis-server:
// callers on node A send to random users whose WebSocket clients are on
// node B. Each payload carries its send time; the clients record the
// latency from Send to arrival. It reports messages per second, p50 and
// p99 latency in milliseconds, and messages lost.
func BenchmarkRedisSend(b *testing.B) { benchRedisSendModes(b) }

// BenchmarkRedisSendSigned is BenchmarkRedisSend with SigningKeys on both
// nodes: one signature per Send, one verification per delivery.
func BenchmarkRedisSendSigned(b *testing.B) { benchRedisSendModes(b, signKey1) }

func benchRedisSendModes(b *testing.B, keys ...[]byte) {
	srv := redistest.Start(b)
	for _, m := range []struct {
		mode string
		mk   redisBackplane
	}{{"pubsub", redisPubSub(wsredis.Options{})}, {"streams", redisStreams(wsredis.StreamsOptions{})}} {
		for _, callers := range []int{1, 16} {
			b.Run(fmt.Sprintf("mode=%s/callers=%d", m.mode, callers), func(b *testing.B) {
				benchRedisSend(b, srv.Addr(), m.mk, callers, keys)
			})
		}
	}
}

func benchRedisSend(b *testing.B, addr string, mk redisBackplane, callers int, keys [][]byte) {
	const users = 100
	prefix := "bench-" + randomHex() + ":"
	hubs := make([]*Hub, 2)
	for i := range hubs {
		client := goredis.NewClient(&goredis.Options{Addr: addr, PoolSize: 32})
		bp, _, err := mk(client, prefix)
		if err != nil {
			b.Fatal(err)
		}
		h, err := New(&Options{Backplane: bp, Logger: quiet, SendQueueLen: 1 << 16,
			Authenticate: userFromQuery, SigningKeys: keys})
		if err != nil {
			b.Fatal(err)
		}
		hubs[i] = h
		b.Cleanup(func() {
			_ = h.Close(context.Background())
			_ = bp.Close()
			_ = client.Close()
		})
	}
	srv := httptest.NewServer(hubs[1])
	b.Cleanup(srv.Close)

	var received atomic.Int64
	var mu sync.Mutex
	lat := make([]time.Duration, 0, 1<<16)
	var readers sync.WaitGroup
	b.Cleanup(readers.Wait) // last: after the connections are closed
	for u := 0; u < users; u++ {
		conn, _, err := websocket.Dial(context.Background(), wsURL(srv)+"/ws?user=u"+fmt.Sprint(u), nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = conn.CloseNow() })
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				_, data, err := conn.Read(context.Background())
				if err != nil {
					return
				}
				d := time.Duration(time.Now().UnixNano() - int64(binary.BigEndian.Uint64(data)))
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
				received.Add(1)
			}
		}()
	}

	b.ResetTimer()
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	for c := 0; c < callers; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			payload := make([]byte, 64)
			for next.Add(1) <= int64(b.N) {
				binary.BigEndian.PutUint64(payload, uint64(time.Now().UnixNano()))
				msg := Binary(append([]byte(nil), payload...))
				if err := hubs[0].Send(context.Background(), fmt.Sprint("u", rand.IntN(users)), msg); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for received.Load() < int64(b.N) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()

	mu.Lock()
	defer mu.Unlock()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) float64 {
		if len(lat) == 0 {
			return 0
		}
		return float64(lat[int(p*float64(len(lat)-1))]) / 1e6
	}
	b.ReportMetric(float64(received.Load())/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(pct(0.50), "p50_ms")
	b.ReportMetric(pct(0.99), "p99_ms")
	b.ReportMetric(float64(int64(b.N)-received.Load()), "lost")
}
