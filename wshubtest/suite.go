package wshubtest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wshub/wshub"
	"github.com/wshub/wshub/backplane"
)

// Harness makes the backplane nodes of one cluster for RunHub: every node
// it makes shares one bus (one memory.Bus, one Redis server and key
// prefix...), so that hubs on them form a cluster.
type Harness interface {
	// NewBackplane returns a new node of the bus, not started, for the hub
	// whose NodeID is nodeID. The suite gives it to that hub and closes it
	// after the hub.
	NewBackplane(ctx context.Context, nodeID string) (backplane.Backplane, error)
	// Close releases what the harness holds. It is called after every
	// backplane it made was closed.
	Close()
}

// Faults is implemented by a Harness that can cut a node off its bus, as a
// network fault would. The suite then checks that the backplanes report
// it: they must implement backplane.Notifier and backplane.Checker.
type Faults interface {
	// Cut breaks the link of the backplane made for nodeID: it stops
	// receiving, and reports EventDown, until Heal.
	Cut(nodeID string) error
	// Heal mends the link that Cut broke.
	Heal(nodeID string) error
}

// HarnessMaker makes a fresh Harness for one case of RunHub. ctx ends when
// the case ends; t is the case's own test.
type HarnessMaker func(ctx context.Context, t *testing.T) (Harness, error)

// Features describes what a backend promises to the hub beyond the core
// contract. The zero Features asks for the core contract only.
type Features struct {
	// CatchUp declares that a node cut off by Faults misses nothing: after
	// Heal it delivers what was published to it meanwhile, in order, and
	// EventRestored has Gap false (Redis Streams). Without it, what was
	// published during a cut may be lost.
	CatchUp bool

	// Presence declares that the backplanes keep presence (they implement
	// backplane.Presence): the suite adds the presence cases (Online,
	// TopicCount and TopicMembers across nodes, events once per change,
	// presence messages, Limits.ClusterSessionsPerUser under a race,
	// acknowledged joins and, with Faults, the expiry of a cut node's
	// sessions and their return after Heal). PresenceTTL must be set with
	// it.
	Presence bool

	// PresenceTTL is, with Presence, the time to live the harness gave its
	// backplanes' presence; keep it short (under a second) so that the
	// expiry case is quick. The suite waits up to Timeout plus four times
	// it for presence to settle.
	PresenceTTL time.Duration
}

// RunHub runs the hub-level cluster suite against the backend that
// newHarness makes: what the hub promises across a cluster (delivery to
// users, topics and sessions on every node, order, cluster-wide Join,
// Leave and Disconnect, slow clients, malformed messages, Close, and link
// faults when the harness implements Faults) must hold on every
// backplane. Each case runs as a subtest of t with a fresh harness and
// fresh hubs, and closes them in its cleanup.
//
// A backend's test file calls it next to backplanetest.Run:
//
//	func TestHub(t *testing.T) {
//		wshubtest.RunHub(t, newHubHarness, wshubtest.Features{})
//	}
//
// The suite wraps each backplane it is given, to count what it hands to
// the hub and which channels the hub holds; the wrapper passes on
// backplane.Notifier, backplane.Checker and backplane.Log.
func RunHub(t *testing.T, newHarness HarnessMaker, f Features) {
	t.Helper()
	if newHarness == nil {
		t.Fatal("wshubtest: nil HarnessMaker")
	}
	if f.Presence && f.PresenceTTL <= 0 {
		t.Fatal("wshubtest: Features.Presence needs a positive Features.PresenceTTL")
	}
	cases := hubCases
	if f.Presence {
		cases = append(cases[:len(cases):len(cases)], presenceCases...)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.run(t, newEnv(t, newHarness, f))
		})
	}
}

// env is what a case of the suite works with.
type env struct {
	t          *testing.T
	ctx        context.Context
	h          Harness
	f          Features
	newHarness HarnessMaker
}

// newEnv makes a fresh harness for t, closed in t's cleanup after every
// node it made.
func newEnv(t *testing.T, newHarness HarnessMaker, f Features) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	h, err := newHarness(ctx, t)
	if err != nil {
		t.Fatalf("wshubtest: make harness: %v", err)
	}
	if h == nil {
		t.Fatal("wshubtest: HarnessMaker returned a nil Harness")
	}
	t.Cleanup(h.Close)
	return &env{t: t, ctx: ctx, h: h, f: f, newHarness: newHarness}
}

// fresh returns an env with a harness of its own for t, a subtest.
func (e *env) fresh(t *testing.T) *env {
	t.Helper()
	return newEnv(t, e.newHarness, e.f)
}

// suiteCluster is a cluster of the suite: a Cluster plus the wrapped
// backplane of each node.
type suiteCluster struct {
	*Cluster
	bps []*watched
}

// cluster starts n hubs on the harness's backplanes. tweak may change node
// i's options.
func (e *env) cluster(n int, tweak func(i int, o *wshub.Options)) *suiteCluster {
	e.t.Helper()
	sc := &suiteCluster{}
	sc.Cluster = start(e.t, n, nil, tweak, func(name string) (backplane.Backplane, error) {
		bp, err := e.h.NewBackplane(e.ctx, name)
		if err != nil {
			return nil, err
		}
		if bp == nil {
			return nil, fmt.Errorf("wshubtest: the harness made a nil backplane for %s", name)
		}
		w := watch(bp)
		sc.bps = append(sc.bps, w)
		return w.backplane(), nil
	})
	return sc
}

// watched counts what a backplane hands to its hub and keeps the set of
// channels the hub holds on it.
type watched struct {
	backplane.Backplane
	received atomic.Uint64

	mu   sync.Mutex
	subs map[string]bool // channels the hub subscribed to and did not unsubscribe
}

func watch(bp backplane.Backplane) *watched {
	return &watched{Backplane: bp, subs: make(map[string]bool)}
}

// backplane returns w with the optional interfaces of the backplane it
// wraps.
func (w *watched) backplane() backplane.Backplane {
	lg, isLog := w.Backplane.(backplane.Log)
	p, isPresence := w.Backplane.(backplane.Presence)
	switch {
	case isLog && isPresence:
		return struct {
			*watched
			backplane.Log
			backplane.Presence
		}{w, lg, p}
	case isLog:
		return struct {
			*watched
			backplane.Log
		}{w, lg}
	case isPresence:
		return struct {
			*watched
			backplane.Presence
		}{w, p}
	}
	return w
}

// Start counts every message before the hub's handler sees it.
func (w *watched) Start(h backplane.Handler) error {
	if h == nil {
		return w.Backplane.Start(nil)
	}
	return w.Backplane.Start(func(m backplane.Message) {
		w.received.Add(1)
		h(m)
	})
}

// Subscribe records the channels once the backplane took them.
func (w *watched) Subscribe(ctx context.Context, channels ...string) error {
	err := w.Backplane.Subscribe(ctx, channels...)
	if err == nil {
		w.mu.Lock()
		for _, ch := range channels {
			w.subs[ch] = true
		}
		w.mu.Unlock()
	}
	return err
}

// Unsubscribe forgets the channels.
func (w *watched) Unsubscribe(ctx context.Context, channels ...string) error {
	w.mu.Lock()
	for _, ch := range channels {
		delete(w.subs, ch)
	}
	w.mu.Unlock()
	return w.Backplane.Unsubscribe(ctx, channels...)
}

// Notify passes fn on, when the backplane reports its link.
func (w *watched) Notify(fn func(backplane.Event)) {
	if n, ok := w.Backplane.(backplane.Notifier); ok {
		n.Notify(fn)
	}
}

// Health is the backplane's, or nil when it cannot tell.
func (w *watched) Health() error {
	if c, ok := w.Backplane.(backplane.Checker); ok {
		return c.Health()
	}
	return nil
}

// held returns the channels the hub holds now.
func (w *watched) held() map[string]bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	m := make(map[string]bool, len(w.subs))
	for ch := range w.subs {
		m[ch] = true
	}
	return m
}
