package redis_test

import (
	"io"
	"log/slog"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// quiet drops logs that tests provoke on purpose.
var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))
