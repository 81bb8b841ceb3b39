package browsertest

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// The harness launches the system Chromium, which loads a page and runs its
// script.
func TestSmoke(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		_, _ = w.Write([]byte(`<p id=m></p><script>document.getElementById("m").textContent = "hello from " + "wshub"</script>`))
	}))
	defer srv.Close()
	Run(t, "smoke.mjs", map[string]string{"url": srv.URL}, time.Minute)
}
