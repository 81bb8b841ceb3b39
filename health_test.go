package wshub

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// probe asks h the way a kubelet does and returns the status and body.
func probe(t *testing.T, h http.Handler, method string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, "/probe", nil))
	assert.Equal(t, "text/plain; charset=utf-8", rec.Header().Get("Content-Type"))
	assert.Equal(t, "no-store", rec.Header().Get("Cache-Control"))
	return rec.Code, rec.Body.String()
}

// The readiness and liveness handlers through a hub's life: the backplane
// cut off and back, a drain, a close. Liveness ignores the backplane and
// the drain; readiness follows all three and names which.
func TestReadinessAndLivenessThroughTheHubsLife(t *testing.T) {
	c := newCluster(t, 1, nil)
	n := c.nodes[0]
	ready, live := n.hub.ReadinessHandler(), n.hub.LivenessHandler()
	dial(t, n, "alice") // a session: the inbox is subscribed, as on a serving node

	steps := []struct {
		name            string
		do              func(t *testing.T)
		ready, liveCode int
		readyBody       string
	}{
		{"serving", func(*testing.T) {}, 200, 200, "ok\n"},
		{"backplane cut off", func(t *testing.T) { require.NoError(t, c.bus.Partition("node0")) }, 503, 200, "backplane unavailable\n"},
		{"backplane back", func(t *testing.T) { require.NoError(t, c.bus.Heal("node0")) }, 200, 200, "ok\n"},
		{"draining", func(t *testing.T) { require.NoError(t, n.hub.Drain(bg)) }, 503, 200, "draining\n"},
		{"drained and cut off", func(t *testing.T) { require.NoError(t, c.bus.Partition("node0")) }, 503, 200, "draining\n"},
		{"closed", func(t *testing.T) { require.NoError(t, n.hub.Close(bg)) }, 503, 503, "closed\n"},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			st.do(t)
			code, body := probe(t, ready, http.MethodGet)
			assert.Equal(t, st.ready, code, "readiness")
			assert.Equal(t, st.readyBody, body, "readiness: the reason, never the backplane's error")
			code, body = probe(t, ready, http.MethodHead)
			assert.Equal(t, st.ready, code, "readiness, HEAD")
			assert.Empty(t, body, "HEAD has no body")

			code, body = probe(t, live, http.MethodGet)
			assert.Equal(t, st.liveCode, code, "liveness")
			if st.liveCode == 200 {
				assert.Equal(t, "ok\n", body)
			} else {
				assert.Equal(t, "closed\n", body)
			}
		})
	}
	require.NoError(t, c.bus.Heal("node0"))
}

// A hub that never served, such as a worker that only sends, is ready.
func TestReadinessOfASender(t *testing.T) {
	h, err := New(&Options{Logger: quiet})
	require.NoError(t, err)
	code, body := probe(t, h.ReadinessHandler(), http.MethodGet)
	assert.Equal(t, 200, code)
	assert.Equal(t, "ok\n", body)
	require.NoError(t, h.Close(bg))
	code, _ = probe(t, h.ReadinessHandler(), http.MethodGet)
	assert.Equal(t, 503, code)
}
