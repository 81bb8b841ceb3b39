package memory_test

import (
	"context"
	"testing"

	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/backplane/backplanetest"
	"github.com/wshub/wshub/backplane/memory"
)

func TestConformance(t *testing.T) {
	backplanetest.Run(t, newHarness, backplanetest.Features{})
}

// harness makes the nodes of one memory.Bus.
type harness struct{ bus *memory.Bus }

func newHarness(context.Context, *testing.T) (backplanetest.Harness, error) {
	return harness{bus: memory.NewBus()}, nil
}

func (h harness) MakeNode(context.Context) (backplane.Backplane, error) {
	return h.bus.NewNode("")
}

func (harness) Close() {}
