package memory_test

import (
	"context"
	"testing"
	"time"

	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/backplane/backplanetest"
	"github.com/wshub/wshub/backplane/memory"
)

// logRetained is how many messages per channel the buses of
// TestConformanceWithLogs keep.
const logRetained = 100

// presenceTTL is the presence time to live of the buses of TestConformance:
// short, for the suite waits for expiry in multiples of it.
const presenceTTL = time.Second

// TestConformance runs the suite, the Presence cases included, on a bus
// without logs, the default.
func TestConformance(t *testing.T) {
	backplanetest.Run(t, newHarness(0, presenceTTL), backplanetest.Features{Presence: true, PresenceTTL: presenceTTL})
}

// TestConformanceWithLogs runs the suite, the Replay cases included, on a
// bus that keeps logs bounded by count alone.
func TestConformanceWithLogs(t *testing.T) {
	backplanetest.Run(t, newHarness(logRetained, 0), backplanetest.Features{Replay: true, Retained: logRetained})
}

// harness makes the nodes of one memory.Bus.
type harness struct{ bus *memory.Bus }

// newHarness returns a HarnessMaker of buses that keep logs of retained
// messages per channel, or none for 0, and whose presence time to live is
// ttl, or the default for 0.
func newHarness(retained int, ttl time.Duration) backplanetest.HarnessMaker {
	return func(context.Context, *testing.T) (backplanetest.Harness, error) {
		bus := memory.NewBus()
		if retained > 0 {
			if err := bus.SetLogLimit(retained, 0); err != nil {
				return nil, err
			}
		}
		if ttl > 0 {
			if err := bus.SetPresenceTTL(ttl); err != nil {
				return nil, err
			}
		}
		return harness{bus: bus}, nil
	}
}

func (h harness) MakeNode(context.Context) (backplane.Backplane, error) {
	return h.bus.NewNode("")
}

func (harness) Close() {}
