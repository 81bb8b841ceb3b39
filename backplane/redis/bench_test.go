package redis_test

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/wshub/wshub/backplane"
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
	mk := func(h backplane.Handler) *wsredis.PubSub {
		client := goredis.NewClient(&goredis.Options{Addr: addr})
		bp, err := wsredis.NewPubSub(client, &wsredis.Options{Prefix: prefix, Logger: quiet})
		if err != nil {
			b.Fatal(err)
		}
		if err := bp.Start(h); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = bp.Close(); _ = client.Close() })
		return bp
	}
	pub := mk(func(backplane.Message) {})
	var got atomic.Int64
	done := make(chan struct{})
	if subscribed {
		sub := mk(func(backplane.Message) {
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

// BenchmarkStreamsCatchUp measures how long a node cut off from Redis
// takes, once the link is back, to deliver the 10,000 messages it missed:
// from the heal to the last delivery, reported as catchup_ms.
func BenchmarkStreamsCatchUp(b *testing.B) {
	const missed = 10000
	srv := redistest.Start(b)
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		prefix := "catchup-" + randomHex() + ":"
		proxy := redistest.NewProxy(b, srv.Addr())
		mk := func(addr string, h backplane.Handler) *wsredis.Streams {
			client := goredis.NewClient(&goredis.Options{Addr: addr})
			bp, err := wsredis.NewStreams(client, &wsredis.StreamsOptions{
				Options: wsredis.Options{Prefix: prefix, Logger: quiet, ProbeInterval: 50 * time.Millisecond},
				MaxLen:  2 * missed})
			if err != nil {
				b.Fatal(err)
			}
			if err := bp.Start(h); err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = bp.Close(); _ = client.Close() })
			return bp
		}
		pub := mk(srv.Addr(), func(backplane.Message) {})
		var got atomic.Int64
		done := make(chan struct{})
		events := make(chan backplane.Event, 10)
		sub := mk(proxy.Addr(), func(backplane.Message) {
			if got.Add(1) == missed {
				close(done)
			}
		})
		sub.Notify(func(e backplane.Event) { events <- e })
		if err := sub.Subscribe(bg, "c"); err != nil {
			b.Fatal(err)
		}
		proxy.Cut()
		if e := <-events; e.Kind != backplane.EventDown {
			b.Fatalf("event %v", e.Kind)
		}
		var wg sync.WaitGroup
		for w := 0; w < 16; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := w; j < missed; j += 16 {
					if err := pub.Publish(bg, "c", []byte("x")); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		b.StartTimer()
		start := time.Now()
		proxy.Heal()
		<-done
		b.ReportMetric(float64(time.Since(start).Milliseconds()), "catchup_ms")
	}
}
