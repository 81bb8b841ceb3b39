// Package browsertest runs the examples' browser tests: scripts in e2e/ that
// drive Debian's Chromium headless with playwright-core. A Go test starts the
// example's servers, then calls Run with the script and what it needs (the
// page's URL, a control URL the script asks to kill nodes or restart Redis).
//
// The tests skip when node, Chromium or e2e/node_modules is missing, unless
// WSHUB_REQUIRE_BROWSER=1 (set by CI, whose .ci/run installs them), which
// turns the skip into a failure.
package browsertest

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"
)

// RequireEnv is the environment variable that turns a missing browser into
// a failure.
const RequireEnv = "WSHUB_REQUIRE_BROWSER"

// chromium is where Debian's package puts the browser; WSHUB_CHROMIUM
// overrides it.
func chromium() string {
	if p := os.Getenv("WSHUB_CHROMIUM"); p != "" {
		return p
	}
	return "/usr/bin/chromium"
}

// e2eDir returns the repository's e2e directory.
func e2eDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "e2e")
}

// Need skips t (or fails it, under WSHUB_REQUIRE_BROWSER=1) when the
// browser tests cannot run here.
func Need(t testing.TB) {
	t.Helper()
	missing := ""
	if _, err := exec.LookPath("node"); err != nil {
		missing = "node"
	} else if _, err := os.Stat(chromium()); err != nil {
		missing = chromium()
	} else if _, err := os.Stat(filepath.Join(e2eDir(), "node_modules", "playwright-core")); err != nil {
		missing = "e2e/node_modules/playwright-core (npm ci in e2e/)"
	}
	if missing == "" {
		return
	}
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("browsertest: %s is missing and %s=1", missing, RequireEnv)
	}
	t.Skipf("browsertest: %s is missing", missing)
}

// Run runs the script e2e/<script> with args as its JSON argument and fails
// t, with the script's output, unless it exits 0 within timeout.
func Run(t testing.TB, script string, args any, timeout time.Duration) {
	t.Helper()
	Need(t)
	a, err := json.Marshal(args)
	if err != nil {
		t.Fatalf("browsertest: args: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", filepath.Join(e2eDir(), script), string(a))
	cmd.Dir = e2eDir()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Run()
	t.Logf("%s:\n%s", script, out.String())
	if err != nil {
		t.Fatalf("browsertest: %s: %v", script, err)
	}
}

// Control serves the requests a script makes with control() (see
// e2e/lib.mjs): each action's function runs in the test's process and its
// error, if any, answers 500. It returns the URL to pass as args.control.
func Control(t testing.TB, actions map[string]func(params map[string]string) error) string {
	t.Helper()
	var mu sync.Mutex // one action at a time
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		q := r.URL.Query()
		fn := actions[q.Get("action")]
		if fn == nil {
			http.Error(w, "unknown action "+q.Get("action"), http.StatusNotFound)
			return
		}
		params := make(map[string]string, len(q))
		for k := range q {
			params[k] = q.Get(k)
		}
		if err := fn(params); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		_, _ = w.Write([]byte("ok"))
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}
