package redis_test

import (
	"io"
	"log/slog"
	"testing"

	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/wshub/wshub/backplane"
	wsredis "github.com/wshub/wshub/backplane/redis"
)

func TestMain(m *testing.M) {
	// go-redis's pool finishes a dial it started, with its own retries,
	// in a goroutine that can outlive Client.Close for a moment when the
	// server is gone (the fault tests kill it). It ends by itself.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).queuedNewConn.func2"))
}

// quiet drops logs that tests provoke on purpose.
var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// anyNode is what the tests that run on both types use of a backplane.
type anyNode interface {
	backplane.Backplane
	backplane.Notifier
	backplane.Checker
}

// backplaneType makes backplanes of one type of this package.
type backplaneType struct {
	name string
	make func(c goredis.UniversalClient, o wsredis.Options) (anyNode, error)
}

// backplaneTypes returns both types, PubSub and Streams (with default
// retention).
func backplaneTypes() []backplaneType {
	return []backplaneType{
		{"pubsub", func(c goredis.UniversalClient, o wsredis.Options) (anyNode, error) {
			p, err := wsredis.NewPubSub(c, &o)
			if err != nil {
				return nil, err
			}
			return p, nil
		}},
		{"streams", func(c goredis.UniversalClient, o wsredis.Options) (anyNode, error) {
			s, err := wsredis.NewStreams(c, &wsredis.StreamsOptions{Options: o})
			if err != nil {
				return nil, err
			}
			return s, nil
		}},
	}
}
