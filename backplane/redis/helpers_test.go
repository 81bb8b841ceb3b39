package redis_test

import (
	"io"
	"log/slog"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// go-redis's pool finishes a dial it started, with its own retries,
	// in a goroutine that can outlive Client.Close for a moment when the
	// server is gone (the fault tests kill it). It ends by itself.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).queuedNewConn.func2"))
}

// quiet drops logs that tests provoke on purpose.
var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))
