package wshub

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"sync"
	"testing"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/backplane"
)

// recordingBP is a backplane that records subscription calls, can hold the
// next Subscribe until released, and can fail.
type recordingBP struct {
	mu      sync.Mutex
	handler backplane.Handler
	subs    map[string]bool
	calls   [][]string // each Subscribe call's channels, "-" prefixed for Unsubscribe
	fail    error
	hold    chan struct{} // when set, Subscribe waits for it to close
	holding chan struct{} // closed when a held Subscribe is waiting
}

func newRecordingBP() *recordingBP { return &recordingBP{subs: make(map[string]bool)} }

func (b *recordingBP) Close() error { return nil }

func (b *recordingBP) Start(h backplane.Handler) error {
	b.mu.Lock()
	b.handler = h
	b.mu.Unlock()
	return nil
}

// Publish loops back to this node's own handler, as a one-node bus would.
func (b *recordingBP) Publish(_ context.Context, ch string, p []byte) error {
	b.mu.Lock()
	h, sub := b.handler, b.subs[ch]
	b.mu.Unlock()
	if sub && h != nil {
		h(backplane.Message{Channel: ch, Payload: p})
	}
	return nil
}

func (b *recordingBP) Subscribe(ctx context.Context, chs ...string) error {
	b.mu.Lock()
	hold, holding := b.hold, b.holding
	b.hold, b.holding = nil, nil
	b.mu.Unlock()
	if hold != nil {
		close(holding)
		<-hold
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls = append(b.calls, append([]string(nil), chs...))
	if b.fail != nil {
		return b.fail
	}
	for _, c := range chs {
		b.subs[c] = true
	}
	return nil
}

func (b *recordingBP) Unsubscribe(ctx context.Context, chs ...string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	call := make([]string, len(chs))
	for i, c := range chs {
		call[i] = "-" + c
	}
	b.calls = append(b.calls, call)
	if b.fail != nil {
		return b.fail
	}
	for _, c := range chs {
		delete(b.subs, c)
	}
	return nil
}

func (b *recordingBP) has(ch string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.subs[ch]
}

func (b *recordingBP) setFail(err error) {
	b.mu.Lock()
	b.fail = err
	b.mu.Unlock()
}

func TestInterestBatchesWhileABatchIsInFlight(t *testing.T) {
	bp := newRecordingBP()
	bp.hold, bp.holding = make(chan struct{}), make(chan struct{})
	hold, holding := bp.hold, bp.holding
	im := newInterest(bp, quiet, waitFor)
	defer im.close()

	first := im.first("a")
	<-holding // the batch with "a" is now being applied
	var waits []*flush
	for i := 0; i < 50; i++ {
		waits = append(waits, im.first(fmt.Sprint("c", i)))
	}
	close(hold)
	require.NoError(t, first.wait(bg))
	for _, f := range waits {
		require.NoError(t, f.wait(bg))
	}
	bp.mu.Lock()
	defer bp.mu.Unlock()
	require.Len(t, bp.calls, 2, "50 channels requested during one call go out in the next one")
	sort.Strings(bp.calls[1])
	assert.Len(t, bp.calls[1], 50)
}

func TestInterestFirstAndLast(t *testing.T) {
	bp := newRecordingBP()
	im := newInterest(bp, quiet, waitFor)
	defer im.close()

	require.NoError(t, im.first("x").wait(bg))
	require.Nil(t, im.ready("x"), "a subscribed channel needs no wait")
	assert.True(t, bp.has("x"))
	im.last("x")
	require.Eventually(t, func() bool { return !bp.has("x") }, waitFor, 1e6)

	// Dropped and wanted again in quick succession: it ends subscribed.
	require.NoError(t, im.first("y").wait(bg))
	for i := 0; i < 100; i++ {
		im.last("y")
		require.NoError(t, im.first("y").wait(bg))
	}
	assert.True(t, bp.has("y"))
	im.last("nobody") // not an error
	assert.ElementsMatch(t, []string{"y"}, im.subscribed())
}

func TestInterestFailureIsReportedAndRetried(t *testing.T) {
	bp := newRecordingBP()
	bp.setFail(backplane.ErrUnavailable)
	im := newInterest(bp, quiet, waitFor)
	defer im.close()

	err := im.first("z").wait(bg)
	require.ErrorIs(t, err, backplane.ErrUnavailable)
	assert.False(t, bp.has("z"))

	// The reference is still held: once the backplane recovers, the retry
	// subscribes it without any new call.
	bp.setFail(nil)
	require.Eventually(t, func() bool { return bp.has("z") }, waitFor, 1e6)
	require.Nil(t, im.ready("z"))
}

func TestUpgradeAnswers503WhenTheBackplaneCannotSubscribe(t *testing.T) {
	bp := newRecordingBP()
	h, err := New(&Options{Backplane: bp, Authenticate: userFromQuery, Logger: quiet})
	require.NoError(t, err)
	defer func() { require.NoError(t, h.Close(bg)) }()
	srv := httptest.NewServer(h)
	defer srv.Close()
	bp.setFail(backplane.ErrUnavailable)

	_, resp, err := websocket.Dial(bg, wsURL(srv)+"?user=u", nil)
	require.Error(t, err)
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	assert.Zero(t, h.Stats().Sessions, "nothing was kept of the refused session")

	bp.setFail(nil)
	conn, _, err := websocket.Dial(bg, wsURL(srv)+"?user=u", nil)
	require.NoError(t, err, "upgrades work again once the backplane does")
	_ = conn.Close(websocket.StatusNormalClosure, "")
}
