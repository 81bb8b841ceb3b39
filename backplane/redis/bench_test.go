package redis_test

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	goredis "github.com/redis/go-redis/v9"

	wsredis "github.com/wshub/wshub/backplane/redis"
	"github.com/wshub/wshub/internal/redistest"
)

// BenchmarkPublish measures Publish on a real redis-server from 1 and 16
// concurrent callers, with and without a subscribed node receiving every
// message. Concurrent callers share pipelines.
func BenchmarkPublish(b *testing.B) {
	srv := redistest.Start(b)
	for _, sub := range []bool{false, true} {
		for _, callers := range []int{1, 16} {
			b.Run(fmt.Sprintf("subscribed=%v/callers=%d", sub, callers), func(b *testing.B) {
				benchPublish(b, srv.Addr(), callers, sub)
			})
		}
	}
}

func benchPublish(b *testing.B, addr string, callers int, subscribed bool) {
	prefix := "bench-" + randomHex() + ":"
	mk := func(h func(string, []byte)) *wsredis.Backplane {
		client := goredis.NewClient(&goredis.Options{Addr: addr})
		bp, err := wsredis.New(client, &wsredis.Options{Prefix: prefix, Logger: quiet})
		if err != nil {
			b.Fatal(err)
		}
		if err := bp.Start(h); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = bp.Close(); _ = client.Close() })
		return bp
	}
	pub := mk(func(string, []byte) {})
	var got atomic.Int64
	done := make(chan struct{})
	if subscribed {
		sub := mk(func(string, []byte) {
			if got.Add(1) == int64(b.N) {
				close(done)
			}
		})
		if err := sub.Subscribe(bg, "c"); err != nil {
			b.Fatal(err)
		}
	}
	payload := make([]byte, 64)
	b.ReportAllocs()
	b.ResetTimer()
	var next atomic.Int64
	var wg sync.WaitGroup
	for c := 0; c < callers; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				if err := pub.Publish(bg, "c", payload); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if subscribed {
		<-done
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
