package webclient

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub"
	"github.com/wshub/wshub/backplane/memory"
	"github.com/wshub/wshub/internal/browsertest"
)

// testPage loads the client and leaves the driving to the script: start
// connects, and every callback is recorded in events.
const testPage = `<!doctype html><meta charset="utf-8"><title>wshub.js test</title>
<script type="module">
import { connect } from "/wshub.js";
window.events = [];
const rec = (e) => window.events.push({ t: Date.now(), ...e });
window.start = (name, opts = {}) => {
  window.conn = connect("/ws?name=" + name, { ...opts,
    onMessage(data, info) { rec({ kind: "message", data: typeof data === "string" ? data : "bytes:" + [...data].join(","), ...info }); },
    onNotRecovered(channel) { rec({ kind: "not-recovered", channel }); },
    onState(state, info) { rec({ kind: "state", state, ...info }); },
  });
};
window.ready = true;
</script>`

// The client in a real browser against a hub: resume across closes (the
// heads sent back, each message once), "!not-recovered", the reconnect
// delays after 1012 and others, no reconnect after a 4xxx close or close(),
// the batched framing and binary messages. See testdata/client.mjs.
func TestBrowserClient(t *testing.T) {
	browsertest.Need(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	bus := memory.NewBus()
	require.NoError(t, bus.SetLogLimit(1000, 0)) // logs, for resume
	bp, err := bus.NewNode("n1")
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, bp.Close()) })
	hub, err := wshub.New(&wshub.Options{
		Backplane:    bp,
		Authenticate: func(r *http.Request) (string, error) { return r.URL.Query().Get("name"), nil },
		Logger:       quiet,
	})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, hub.Close(context.Background())) })

	var mu sync.Mutex
	var upgrades []url.Values // the query of every upgrade, in order
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = io.WriteString(w, testPage)
	})
	mux.Handle("GET /wshub.js", Handler())
	mux.Handle("/ws", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		upgrades = append(upgrades, r.URL.Query())
		mu.Unlock()
		hub.ServeHTTP(w, r)
	}))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)

	ctx := context.Background()
	control := browsertest.Control(t, map[string]func(map[string]string) error{
		"send": func(p map[string]string) error {
			msg := wshub.Text(p["text"])
			if p["binary"] != "" {
				msg = wshub.Binary([]byte(p["text"]))
			}
			return hub.Send(ctx, p["user"], msg)
		},
		"disconnect": func(p map[string]string) error {
			code, err := strconv.Atoi(p["code"])
			if err != nil {
				return err
			}
			return hub.Disconnect(ctx, p["user"], wshub.StatusCode(code), p["reason"])
		},
		"drop-log": func(p map[string]string) error { return bus.DropLog("u:" + p["user"]) },
	})
	browsertest.Run(t, "../examples/internal/webclient/testdata/client.mjs",
		map[string]string{"url": srv.URL, "control": control}, time.Minute)

	// What the client asked for when it connected, and reconnected.
	mu.Lock()
	defer mu.Unlock()
	var u1 []url.Values
	for _, q := range upgrades {
		if q.Get("name") == "u1" {
			u1 = append(u1, q)
		}
	}
	require.GreaterOrEqual(t, len(u1), 3, "u1 connected, then reconnected twice")
	key := u1[0].Get(wshub.ClientParam)
	assert.Regexp(t, "^[0-9a-f]{24}$", key, "a per-tab key")
	assert.Equal(t, "1", u1[0].Get(wshub.PositionsParam))
	assert.Empty(t, u1[0][wshub.SinceParam], "nothing to resume the first time")
	for i, q := range u1[1:] {
		assert.Equal(t, key, q.Get(wshub.ClientParam), "reconnect %d keeps the key", i+1)
		since := q[wshub.SinceParam]
		if assert.Len(t, since, 1, "reconnect %d resumes u:u1", i+1) {
			assert.True(t, strings.HasSuffix(since[0], " u:u1"), since[0])
		}
	}
	for _, q := range upgrades {
		if q.Get("name") == "u2" {
			assert.Equal(t, "1", q.Get(wshub.BatchParam), "u2 asked for batches")
		}
	}
}
