package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/examples/rooms/internal/stream"
)

// syncBuffer is a bytes.Buffer safe for a writer and a reader at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The one command, `go run ./examples/rooms`: the in-process streamer's
// frames reach a viewer, and a signal shuts it all down.
func TestRun(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-addr", "127.0.0.1:0", "-ingest", "127.0.0.1:0", "-fps", "50", "-drain", "1s"}, &out)
	}()
	listening := regexp.MustCompile(`msg="rooms listening" addr=(\S+)`)
	var addr string
	require.Eventually(t, func() bool {
		m := listening.FindStringSubmatch(out.String())
		if m != nil {
			addr = m[1]
		}
		return m != nil
	}, waitFor, 10*time.Millisecond, "not listening: %s", out.String())

	wctx, wcancel := context.WithTimeout(context.Background(), waitFor)
	defer wcancel()
	conn, _, err := websocket.Dial(wctx, "ws://"+addr+"/ws?name=A", nil)
	require.NoError(t, err)
	defer conn.CloseNow()
	typ, b, err := conn.Read(wctx)
	require.NoError(t, err)
	assert.Equal(t, websocket.MessageText, typ)
	assert.Contains(t, string(b), `"type":"welcome"`)
	assert.Contains(t, string(b), `"room":"demo"`)
	for range 5 {
		typ, f, err := conn.Read(wctx)
		require.NoError(t, err)
		require.Equal(t, websocket.MessageBinary, typ)
		seq, ok := stream.Seq(f)
		require.True(t, ok)
		require.Equal(t, stream.Generate(seq, stream.DefaultWidth, stream.DefaultHeight), f, "frame %d", seq)
	}

	res, err := http.Get("http://" + addr + "/metrics")
	require.NoError(t, err)
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	require.NoError(t, err)
	assert.Contains(t, string(body), "wshub_messages_dropped_total")
	assert.Regexp(t, `(?m)^rooms_ingest_frames_total [1-9]`, string(body))

	cancel()
	// The drain closes the viewer with 1012, for it to go elsewhere; the
	// client reads on to answer the close.
	for err == nil {
		_, _, err = conn.Read(wctx)
	}
	assert.Equal(t, websocket.StatusServiceRestart, websocket.CloseStatus(err), "close: %v", err)
	select {
	case err := <-done:
		require.NoError(t, err, out.String())
	case <-time.After(waitFor):
		t.Fatalf("run did not return: %s", out.String())
	}
	assert.Contains(t, out.String(), "rooms stopped")
	assert.NotContains(t, out.String(), "drain incomplete")
}
