package memory_test

import (
	"context"
	"testing"
	"time"

	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/backplane/memory"
	"github.com/wshub/wshub/wshubtest"
)

// TestHub runs the hub-level cluster suite on memory buses, with
// Partition and Heal as its faults.
func TestHub(t *testing.T) {
	const ttl = time.Second
	wshubtest.RunHub(t, func(context.Context, *testing.T) (wshubtest.Harness, error) {
		bus := memory.NewBus()
		if err := bus.SetPresenceTTL(ttl); err != nil {
			return nil, err
		}
		return hubHarness{bus: bus}, nil
	}, wshubtest.Features{Presence: true, PresenceTTL: ttl})
}

// hubHarness makes the nodes of one memory.Bus, named after their hubs.
type hubHarness struct{ bus *memory.Bus }

func (h hubHarness) NewBackplane(_ context.Context, nodeID string) (backplane.Backplane, error) {
	return h.bus.NewNode(nodeID)
}

func (h hubHarness) Cut(nodeID string) error  { return h.bus.Partition(nodeID) }
func (h hubHarness) Heal(nodeID string) error { return h.bus.Heal(nodeID) }
func (hubHarness) Close()                     {}
