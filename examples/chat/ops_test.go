package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// get returns the status and body of a GET of base+path.
func get(t *testing.T, base, path string) (int, string) {
	t.Helper()
	resp, err := http.Get(base + path)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(body)
}

// The chat serves /healthz and /readyz; a drain fails readiness (not
// liveness), refuses upgrades and closes the sessions with 1012; Close then
// fails liveness too.
func TestHealthEndpointsAndDrain(t *testing.T) {
	c, err := newChat(nil, "n1", quiet)
	require.NoError(t, err)
	srv := newTestServer(t, c)
	alice := dial(t, srv.URL, "alice", "n1")

	for _, path := range []string{"/healthz", "/readyz"} {
		code, body := get(t, srv.URL, path)
		assert.Equal(t, http.StatusOK, code, path)
		assert.Equal(t, "ok\n", body, path)
	}
	// Prometheus text, with the hub's gauges: alice's session is there.
	code, body := get(t, srv.URL, "/metrics")
	assert.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, "\nwshub_sessions 1\n")
	assert.Contains(t, body, "\nwshub_users 1\n")
	assert.Contains(t, body, "# TYPE wshub_publish_to_enqueue_seconds histogram")
	assert.Contains(t, body, "go_goroutines")

	require.NoError(t, c.Drain(context.Background()))
	<-alice.done
	assert.Equal(t, websocket.StatusServiceRestart, websocket.CloseStatus(alice.err))
	code, body = get(t, srv.URL, "/readyz")
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Equal(t, "draining\n", body)
	code, _ = get(t, srv.URL, "/healthz")
	assert.Equal(t, http.StatusOK, code, "a draining node is alive")

	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, wsURL(srv.URL, "bob"), nil)
	if conn != nil {
		_ = conn.CloseNow()
	}
	require.Error(t, err)
	require.NotNil(t, resp)
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	assert.Equal(t, "1", resp.Header.Get("Retry-After"))

	require.NoError(t, c.Close(ctx))
	code, body = get(t, srv.URL, "/healthz")
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Equal(t, "closed\n", body)
}

// newTestServer serves c until the test ends, then closes it (again: the
// test may have closed it already).
func newTestServer(t *testing.T, c *chat) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(c)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		assert.NoError(t, c.Close(ctx))
		srv.Close()
	})
	return srv
}

// A client names the rooms it wants with "room" parameters: they are
// joined before the handshake completes, in place of the lobby, so that a
// reconnecting client resumes them. A bad name is answered with an error;
// the other rooms are joined.
func TestRoomsNamedOnConnect(t *testing.T) {
	srv := startChat(t, nil, "")
	bob := dial(t, srv.URL, "bob", "")
	q := url.Values{"name": {"alice"}, "room": {"go", " bad", "rust"}}
	alice := dialURL(t, "ws"+strings.TrimPrefix(srv.URL, "http")+"/ws?"+q.Encode(), "alice")
	assert.Equal(t, "welcome", alice.next().Type)
	alice.expect(event{Type: "joined", Room: "go"})
	alice.expectError("surrounding spaces")
	alice.expect(event{Type: "joined", Room: "rust"})
	alice.waitMembers("go", "alice")

	alice.send(`{"type":"say","room":"lobby","text":"hi"}`)
	alice.expectError(`not in room "lobby"`)
	bob.send(`{"type":"join","room":"rust"}`)
	bob.expect(event{Type: "joined", Room: "rust"})
	bob.send(`{"type":"say","room":"rust","text":"hi"}`)
	want := event{Type: "message", Room: "rust", From: "bob", Text: "hi"}
	alice.expect(want)
	bob.expect(want)
}
