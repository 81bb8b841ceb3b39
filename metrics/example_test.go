package metrics_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wshub/wshub"
	"github.com/wshub/wshub/metrics"
)

// A hub's metrics served on /metrics beside its WebSocket endpoint, and
// scraped once a client has connected, sent a message and left.
func ExampleNewCollector() {
	ctx := context.Background()
	hub, err := wshub.New(nil)
	if err != nil {
		panic(err)
	}
	defer hub.Close(ctx)

	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewCollector(hub))
	mux := http.NewServeMux()
	mux.Handle("/ws", hub)
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	conn, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", nil)
	if err != nil {
		panic(err)
	}
	_ = conn.Write(ctx, websocket.MessageText, []byte("hello"))
	_ = conn.Close(websocket.StatusNormalClosure, "")
	for hub.Metrics().Closed.Normal == 0 { // the hub ends the session after the client's close
		time.Sleep(time.Millisecond)
	}

	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	lines := bufio.NewScanner(resp.Body)
	for lines.Scan() {
		line := lines.Text()
		for _, prefix := range []string{
			"wshub_sessions ",
			"wshub_sessions_accepted_total ",
			`wshub_sessions_closed_total{reason="normal"}`,
			"wshub_messages_received_total ",
			"wshub_received_bytes_total ",
			"wshub_backplane_up ",
		} {
			if strings.HasPrefix(line, prefix) {
				fmt.Println(line)
			}
		}
	}
	// Output:
	// wshub_backplane_up 1
	// wshub_messages_received_total 1
	// wshub_received_bytes_total 5
	// wshub_sessions 0
	// wshub_sessions_accepted_total 1
	// wshub_sessions_closed_total{reason="normal"} 1
}
