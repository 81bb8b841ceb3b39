package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"runtime/pprof"
	"sync"
	"sync/atomic"
)

// lockedWriter serializes writes to the diagnostics stream.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// countingHandler counts the hub's log records at error level: a panic in a
// hook is one. The handlers derived from it (the hub logs through
// Logger.With) share its count.
type countingHandler struct {
	slog.Handler
	errors *atomic.Int64
}

func newCountingHandler(h slog.Handler) *countingHandler {
	return &countingHandler{Handler: h, errors: new(atomic.Int64)}
}

func (h *countingHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError {
		h.errors.Add(1)
	}
	return h.Handler.Handle(ctx, r)
}

func (h *countingHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &countingHandler{Handler: h.Handler.WithAttrs(attrs), errors: h.errors}
}

func (h *countingHandler) WithGroup(name string) slog.Handler {
	return &countingHandler{Handler: h.Handler.WithGroup(name), errors: h.errors}
}

// tally counts failures and keeps the first error.
type tally struct {
	n     atomic.Int64
	first atomic.Pointer[error]
}

func (t *tally) add(err error) {
	t.n.Add(1)
	t.first.CompareAndSwap(nil, &err)
}

func (t *tally) count() int64 { return t.n.Load() }

// firstErr returns the first error added, or nil.
func (t *tally) firstErr() error {
	if p := t.first.Load(); p != nil {
		return *p
	}
	return nil
}

// prefixed returns s as a parenthesized first error, or "" if s is.
func prefixed(s string) string {
	if s == "" {
		return ""
	}
	return " (first: " + s + ")"
}

// startCPUProfile writes a CPU profile of this process to path until stop.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		_ = f.Close()
	}, nil
}

// writeHeapProfile writes a heap profile of this process to path.
func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}
