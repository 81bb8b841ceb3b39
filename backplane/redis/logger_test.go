package redis_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/backplane"
)

// records is a slog.Handler that keeps every record, at every level.
type records struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec.Clone())
	return nil
}
func (r *records) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *records) WithGroup(string) slog.Handler      { return r }

// find returns the records whose message contains s.
func (r *records) find(s string) []slog.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []slog.Record
	for _, rec := range r.recs {
		if strings.Contains(rec.Message, s) {
			out = append(out, rec)
		}
	}
	return out
}

// A backplane opened from a URL logs to the logger given to
// backplane.Open, and logs the changes of its link, which it reports
// through Notify for the hub to log, at Debug only.
func TestOpenWithLoggerLogsLinkChangesAtDebug(t *testing.T) {
	mr := miniredis.RunT(t)
	var rec records
	ctx, cancel := context.WithTimeout(bg, 5*time.Second)
	defer cancel()
	for _, mode := range []string{"pubsub", "streams"} {
		t.Run(mode, func(t *testing.T) {
			rec = records{}
			bp, err := backplane.Open(ctx, "redis://"+mr.Addr()+"/0?probe_interval=50ms&mode="+mode, backplane.WithLogger(slog.New(&rec)))
			require.NoError(t, err)
			defer bp.Close()
			events := make(chan backplane.Event, 16)
			bp.(backplane.Notifier).Notify(func(e backplane.Event) { events <- e })
			require.NoError(t, bp.Start(func(backplane.Message) {}))
			require.NoError(t, bp.Subscribe(ctx, "u:alice"))

			mr.Close()
			require.Equal(t, backplane.EventDown, (<-events).Kind)
			require.NoError(t, mr.Restart())
			require.Eventually(t, func() bool { return len(rec.find("redis backplane: restored")) > 0 }, 10*time.Second, 5*time.Millisecond)

			for _, msg := range []string{"redis backplane: down", "redis backplane: restored"} {
				got := rec.find(msg)
				require.NotEmpty(t, got, "%q reached the logger given to Open", msg)
				for _, r := range got {
					assert.Equal(t, slog.LevelDebug, r.Level, "%q: the hub logs it at Warn, the backplane at Debug", msg)
				}
			}
		})
	}
}
