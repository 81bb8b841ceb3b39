// Package backplanetest is the conformance suite that every backplane backend
// runs, so that the hub can rely on the same contract whichever backend a
// cluster uses.
//
// A backend's test file calls Run once with a HarnessMaker that makes nodes
// sharing one bus (one memory.Bus, one Redis server...):
//
//	func TestConformance(t *testing.T) {
//		backplanetest.Run(t, newHarness, backplanetest.Features{})
//	}
//
// Every case runs as a subtest with a fresh harness and fresh nodes, closes
// everything it made and then checks that no goroutine was left behind. Run
// must not be called from a parallel test, because the leak check looks at
// every goroutine of the process.
package backplanetest

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/wshub/wshub/backplane"
)

// defaultMaxPayload is the largest payload sent when Features.MaxPayload is 0.
const defaultMaxPayload = 1 << 20

// Harness makes nodes that share one bus.
type Harness interface {
	// MakeNode returns a new node of the bus, not started. The suite starts
	// it, uses it and closes it.
	MakeNode(ctx context.Context) (backplane.Backplane, error)
	// Close releases what the harness holds. It is called after every node
	// it made was closed.
	Close()
}

// HarnessMaker makes a fresh Harness for one case of the suite. ctx ends when
// the case ends; t is the case's own test.
type HarnessMaker func(ctx context.Context, t *testing.T) (Harness, error)

// Features describes what a backend promises beyond the core contract of
// backplane.Backplane, and its limits. The zero Features asks for the core
// contract only. Other fields declare optional abilities (such as replay by
// offset) that the suite then checks.
type Features struct {
	// MaxPayload is the largest payload the suite sends; 0 means 1 MiB.
	MaxPayload int

	// Replay declares that the backend keeps a log of every channel: its
	// nodes implement backplane.Log, and the suite adds the Replay cases
	// (an offset on every message handed to the handler, Read by offset,
	// paging, retention, invalid offsets, Read after Close). Retained must
	// be set with it.
	Replay bool

	// Retained is, with Replay, how many messages per channel the harness's
	// nodes are configured to keep at least (such as a MaxLen option); it
	// must be positive when Replay is set. The suite reads back at most
	// that many messages of a channel, and publishes far more than it
	// (20 × Retained + 200) to check that a Read after an offset that
	// retention dropped fails with backplane.ErrNotRetained. Messages must
	// stay retained for the length of a case (seconds) whatever their age.
	Retained int

	// Presence declares that the backend's nodes implement
	// backplane.Presence, on one store shared by the nodes of a harness;
	// the suite adds the Presence cases (reads of what instances wrote,
	// membership changes, idempotence, paging, limits, refresh and expiry,
	// concurrent updaters, bad input, Close). PresenceTTL must be set with
	// it.
	Presence bool

	// PresenceTTL is, with Presence, the time to live the harness's nodes
	// are configured with; it must be positive when Presence is set. The
	// suite refreshes every instance it keeps alive at least every quarter
	// of it (sooner when RefreshPresence asks), and waits for an instance
	// that it stopped refreshing to expire in multiples of it, so a
	// harness should configure something short, such as 300 to 500 ms.
	PresenceTTL time.Duration
}

// Run runs the conformance suite against the backend that newHarness makes,
// each case as a subtest of t.
func Run(t *testing.T, newHarness HarnessMaker, f Features) {
	t.Helper()
	require.NotNil(t, newHarness, "backplanetest: nil HarnessMaker")
	require.GreaterOrEqual(t, f.MaxPayload, 0, "backplanetest: negative Features.MaxPayload")
	if f.Replay {
		require.Positive(t, f.Retained, "backplanetest: Features.Replay needs a positive Features.Retained")
	}
	if f.Presence {
		require.Positive(t, f.PresenceTTL, "backplanetest: Features.Presence needs a positive Features.PresenceTTL")
	}
	if f.MaxPayload == 0 {
		f.MaxPayload = defaultMaxPayload
	}
	cases := []struct {
		name string
		run  func(t *testing.T, e *env)
	}{
		{"DeliveryAcrossNodes", testDeliveryAcrossNodes},
		{"NoDeliveryWithoutInterest", testNoDeliveryWithoutInterest},
		{"Unsubscribe", testUnsubscribe},
		{"ManyChannelsInOneCall", testManyChannels},
		{"OrderPerPublisher", testOrderPerPublisher},
		{"OrderConcurrentPublishers", testOrderConcurrentPublishers},
		{"Payloads", testPayloads},
		{"HandlerKeepsPayload", testHandlerKeepsPayload},
		{"ConcurrentOperations", testConcurrentOperations},
		{"Closed", testClosed},
		{"CloseBeforeStart", testCloseBeforeStart},
		{"BadInput", testBadInput},
	}
	if f.Replay {
		cases = append(cases, []struct {
			name string
			run  func(t *testing.T, e *env)
		}{
			{"ReplayOffsets", testReplayOffsets},
			{"ReplayReadAfter", testReplayReadAfter},
			{"ReplayReadFromStart", testReplayReadFromStart},
			{"ReplayNotRetained", testReplayNotRetained},
			{"ReplayInvalidOffset", testReplayInvalidOffset},
			{"ReplayClosed", testReplayClosed},
		}...)
	}
	if f.Presence {
		cases = append(cases, []struct {
			name string
			run  func(t *testing.T, e *env)
		}{
			{"PresenceUpdateRead", testPresenceUpdateRead},
			{"PresenceChanges", testPresenceChanges},
			{"PresenceIdempotent", testPresenceIdempotent},
			{"PresencePaging", testPresencePaging},
			{"PresenceLimit", testPresenceLimit},
			{"PresenceNeedsRefresh", testPresenceNeedsRefresh},
			{"PresenceExpiry", testPresenceExpiry},
			{"PresenceConcurrentUpdaters", testPresenceConcurrentUpdaters},
			{"PresenceBadInput", testPresenceBadInput},
			{"PresenceClosed", testPresenceClosed},
		}...)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			runCase(t, newHarness, f, c.run)
		})
	}
}

// runCase runs one case with its own harness. Cleanups run last in, first
// out: the nodes are closed, then the harness, then goroutines are checked.
func runCase(t *testing.T, newHarness HarnessMaker, f Features, run func(*testing.T, *env)) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		if !t.Failed() { // a failed case may have left a publisher behind
			goleak.VerifyNone(t, ignore)
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	h, err := newHarness(ctx, t)
	require.NoError(t, err, "make harness")
	require.NotNil(t, h, "HarnessMaker returned a nil Harness")
	t.Cleanup(h.Close)
	run(t, &env{t: t, ctx: ctx, h: h, f: f})
}
