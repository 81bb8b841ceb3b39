package wshub

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
	_ "github.com/wshub/wshub/backplane/redis"
)

// logLine is one record that a logRecorder kept, with the attributes of
// the logger it came through.
type logLine struct {
	level slog.Level
	msg   string
	attrs map[string]slog.Value
}

// logRecorder is a slog.Handler that keeps every record, at every level.
type logRecorder struct {
	mu    *sync.Mutex
	lines *[]logLine
	with  []slog.Attr
}

func newLogRecorder() logRecorder {
	return logRecorder{mu: new(sync.Mutex), lines: new([]logLine)}
}

func (r logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (r logRecorder) Handle(_ context.Context, rec slog.Record) error {
	l := logLine{level: rec.Level, msg: rec.Message, attrs: make(map[string]slog.Value)}
	for _, a := range r.with {
		l.attrs[a.Key] = a.Value
	}
	rec.Attrs(func(a slog.Attr) bool { l.attrs[a.Key] = a.Value; return true })
	r.mu.Lock()
	defer r.mu.Unlock()
	*r.lines = append(*r.lines, l)
	return nil
}

func (r logRecorder) WithAttrs(as []slog.Attr) slog.Handler {
	r.with = append(append([]slog.Attr(nil), r.with...), as...)
	return r
}

func (r logRecorder) WithGroup(string) slog.Handler { return r }

// find returns the lines whose message contains s.
func (r logRecorder) find(s string) []logLine {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []logLine
	for _, l := range *r.lines {
		if strings.Contains(l.msg, s) {
			out = append(out, l)
		}
	}
	return out
}

// One logger reaches the hub and a backplane opened from a URL, and each
// change of the backplane's link is logged once: by the hub, at Warn, with
// its node; the backplane's own line is at Debug.
func TestLogBackplaneEventsOnceWithTheNode(t *testing.T) {
	mr := miniredis.RunT(t)
	rec := newLogRecorder()
	logger := slog.New(rec)
	var events eventLog
	c := newClusterOn(t, 1, func(_ int, o *Options) {
		o.Logger = logger
		o.OnBackplaneEvent = events.hook
	}, func(t *testing.T, _ string) (backplane.Backplane, func() uint64) {
		bp, err := backplane.Open(bg, "redis://"+mr.Addr()+"/0?probe_interval=50ms&prefix=logs-"+randomHex()+":",
			backplane.WithLogger(logger))
		require.NoError(t, err)
		return bp, func() uint64 { return 0 }
	})
	n := c.nodes[0]
	dial(t, n, "alice") // a subscription for the outage to break

	mr.Close()
	require.Eventually(t, func() bool { return events.has(backplane.EventDown, false) }, waitFor, 5*time.Millisecond)
	require.NoError(t, mr.Restart())
	require.Eventually(t, func() bool { return events.has(backplane.EventRestored, true) }, waitFor, 5*time.Millisecond)
	require.Eventually(t, func() bool { return len(rec.find("wshub: backplane restored")) > 0 }, waitFor, 5*time.Millisecond)

	st := n.hub.Stats()
	for _, tc := range []struct {
		hub, backplane string
		count          uint64
	}{
		{"wshub: backplane down", "redis backplane: down", st.BackplaneDowns},
		{"wshub: backplane restored", "redis backplane: restored", st.BackplaneDowns},
	} {
		hub := rec.find(tc.hub)
		require.Len(t, hub, int(tc.count), "%q: one line per event", tc.hub)
		for _, l := range hub {
			assert.Equal(t, slog.LevelWarn, l.level, tc.hub)
			assert.Equal(t, "node0", l.attrs["node"].String(), "%q names the node", tc.hub)
		}
		bp := rec.find(tc.backplane)
		require.Len(t, bp, int(tc.count), "%q reached the logger given to backplane.Open", tc.backplane)
		for _, l := range bp {
			assert.Equal(t, slog.LevelDebug, l.level, tc.backplane)
		}
	}
	down := rec.find("wshub: backplane down")[0]
	assert.NotEmpty(t, down.attrs["err"].String(), "the cause is in err")
	restored := rec.find("wshub: backplane restored")
	assert.True(t, restored[len(restored)-1].attrs["gap"].Bool(), "pub/sub loses what was published meanwhile")
}

// A restore after which nothing is missing is news, not a warning.
func TestLogRestoreLevelFollowsTheGap(t *testing.T) {
	rec := newLogRecorder()
	h, err := New(&Options{NodeID: "n1", Logger: slog.New(rec)})
	require.NoError(t, err)
	defer h.Close(bg)
	h.onBackplaneEvent(backplane.Event{Kind: backplane.EventRestored})
	h.onBackplaneEvent(backplane.Event{Kind: backplane.EventRestored, Gap: true})
	got := rec.find("wshub: backplane restored")
	require.Len(t, got, 2)
	assert.Equal(t, slog.LevelInfo, got[0].level, "no gap")
	assert.Equal(t, slog.LevelWarn, got[1].level, "a gap")
	for _, l := range got {
		assert.Equal(t, "n1", l.attrs["node"].String())
	}
}
