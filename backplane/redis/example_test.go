package redis_test

import (
	"context"
	"log"
	"net/http"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/wshub/wshub"
	"github.com/wshub/wshub/backplane"
	wsredis "github.com/wshub/wshub/backplane/redis"
)

// Two lines take a hub from one node to many: a backplane on the Redis
// client the application already has, given to the hub. Run the same
// program on every node.
func ExampleNewPubSub() {
	rdb := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:6379"})
	defer rdb.Close() // after the backplane: it never closes the client

	bp, err := wsredis.NewPubSub(rdb, &wsredis.Options{Prefix: "myapp:"})
	if err != nil {
		log.Fatal(err)
	}
	defer bp.Close()
	hub, err := wshub.New(&wshub.Options{Backplane: bp})
	if err != nil {
		log.Fatal(err)
	}
	defer hub.Close(context.Background())

	http.Handle("/ws", hub)
	// Any node reaches alice's sockets, wherever they are connected.
	_ = hub.Send(context.Background(), "alice", wshub.Text("hello"))
}

// With a Streams nothing is lost while a node is cut off from Redis, and
// clients can resume from an offset: the hub finds its backplane.Log.
func ExampleNewStreams() {
	rdb := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:6379"})
	defer rdb.Close()

	bp, err := wsredis.NewStreams(rdb, &wsredis.StreamsOptions{
		Options: wsredis.Options{Prefix: "myapp:"},
		MaxLen:  1000,            // messages each channel's log keeps at least
		MaxAge:  5 * time.Minute, // and for how long
	})
	if err != nil {
		log.Fatal(err)
	}
	defer bp.Close()
	hub, err := wshub.New(&wshub.Options{Backplane: bp})
	if err != nil {
		log.Fatal(err)
	}
	defer hub.Close(context.Background())
}

// The type can also be chosen by URL alone: mode=streams opens a Streams,
// and mode=pubsub (the default) a PubSub.
func ExampleOpen() {
	ctx := context.Background()
	bp, err := backplane.Open(ctx, "redis://127.0.0.1:6379/0?mode=streams&max_len=1000&max_age=5m")
	if err != nil {
		log.Fatal(err)
	}
	defer bp.Close() // opened from a URL: it owns, and closes, its client
	hub, err := wshub.New(&wshub.Options{Backplane: bp})
	if err != nil {
		log.Fatal(err)
	}
	defer hub.Close(ctx)
}
