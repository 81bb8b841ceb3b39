package memory_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/backplane/memory"
)

// Example cuts a node off a simulated cluster and heals it. Errors are
// ignored for brevity.
func Example() {
	ctx := context.Background()
	bus := memory.NewBus()
	a, _ := bus.NewNode("a")
	defer a.Close()
	b, _ := bus.NewNode("b")
	defer b.Close()

	events := make(chan backplane.Event, 8)
	b.Notify(func(ev backplane.Event) { events <- ev }) // must not block
	received := make(chan string, 8)
	_ = a.Start(func(backplane.Message) {})
	_ = b.Start(func(m backplane.Message) { received <- m.Channel + " " + string(m.Payload) })
	_ = b.Subscribe(ctx, "t:news")

	_ = bus.Partition("b")
	ev := <-events
	fmt.Println(ev.Kind, "cause:", ev.Err)

	_ = a.Publish(ctx, "t:news", []byte("lost")) // dropped: b is cut off
	err := b.Publish(ctx, "t:news", []byte("from b"))
	fmt.Println(errors.Is(err, backplane.ErrUnavailable))

	_ = bus.Heal("b")
	ev = <-events
	fmt.Println(ev.Kind, "gap:", ev.Gap)

	_ = a.Publish(ctx, "t:news", []byte("hello"))
	fmt.Println(<-received)

	st, _ := bus.Stats("b")
	fmt.Printf("delivered %d, dropped %d\n", st.Delivered, st.Dropped)
	// Output:
	// down cause: memory: node "b" partitioned: backplane: unavailable
	// true
	// restored gap: true
	// t:news hello
	// delivered 1, dropped 1
}
