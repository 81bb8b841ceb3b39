package wshub

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/backplane/memory"
)

// The presence benchmarks read the record of a memory bus through a hub
// on one of its nodes: 100,000 users online across two instances (the
// instances of two nodes, written below the sessions with UpdatePresence
// in calls of presenceBatch updates, as the tracker writes them), and
// topics of 1,000, 10,000 and 100,000 of them. They measure the hub's
// reads: Online, TopicCount (the same cost at every size: it is O(1)) and
// a page of TopicMembers (O(log n + limit)). The Redis figures are the
// load tool's: wshub-bench -scenario presence.

const presenceBenchUsers = 100000

var presenceBenchSizes = []int{1000, 10000, 100000}

func presenceBenchUser(i int) string { return "user" + strconv.Itoa(i) }

func presenceBenchTopic(size int) string { return "topic" + strconv.Itoa(size) }

// presenceBenchHub returns a hub on node n1 of a bus whose presence record
// holds presenceBenchUsers users, half of them on each of two instances,
// and for each of presenceBenchSizes a topic of that many of them.
func presenceBenchHub(b *testing.B) *Hub {
	b.Helper()
	bus := memory.NewBus()
	if err := bus.SetPresenceTTL(time.Hour); err != nil { // no expiry while it runs
		b.Fatal(err)
	}
	var ps []backplane.Presence
	var insts []string
	for _, name := range []string{"n1", "n2"} {
		n, err := bus.NewNode(name)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = n.Close() })
		inst := name + ".bench"
		if _, err := n.RefreshPresence(bg, inst); err != nil {
			b.Fatal(err)
		}
		ps, insts = append(ps, n), append(insts, inst)
	}
	h, err := New(&Options{Backplane: ps[0].(*memory.Node), NodeID: "n1", Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = h.Close(bg) })

	ups := make([][]backplane.PresenceUpdate, len(ps))
	add := func(i int, key string) {
		u := presenceBenchUser(i)
		ups[i%len(ps)] = append(ups[i%len(ps)], backplane.PresenceUpdate{Key: key, Member: u, Sessions: 1})
	}
	for i := 0; i < presenceBenchUsers; i++ {
		add(i, userPrefix+presenceBenchUser(i))
	}
	for _, size := range presenceBenchSizes {
		for i := 0; i < size; i++ {
			add(i, topicPrefix+presenceBenchTopic(size))
		}
	}
	for n, list := range ups {
		for start := 0; start < len(list); start += presenceBatch {
			chunk := list[start:min(len(list), start+presenceBatch)]
			if _, err := ps[n].UpdatePresence(bg, insts[n], chunk); err != nil {
				b.Fatal(err)
			}
		}
	}
	for _, size := range presenceBenchSizes {
		if got, err := h.TopicCount(bg, presenceBenchTopic(size)); err != nil || got != size {
			b.Fatalf("topic of %d: count %d, %v", size, got, err)
		}
	}
	return h
}

// BenchmarkPresenceOnline measures Hub.Online for one of 100,000 users
// online.
func BenchmarkPresenceOnline(b *testing.B) {
	h := presenceBenchHub(b)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		n, err := h.Online(bg, presenceBenchUser(i*7919%presenceBenchUsers))
		if err != nil || n != 1 {
			b.Fatalf("online: %d, %v", n, err)
		}
	}
}

// BenchmarkPresenceTopicCount measures Hub.TopicCount for topics of 1,000,
// 10,000 and 100,000 members: the same at each size.
func BenchmarkPresenceTopicCount(b *testing.B) {
	h := presenceBenchHub(b)
	for _, size := range presenceBenchSizes {
		topic := presenceBenchTopic(size)
		b.Run(fmt.Sprintf("members=%d", size), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				n, err := h.TopicCount(bg, topic)
				if err != nil || n != size {
					b.Fatalf("count: %d, %v", n, err)
				}
			}
		})
	}
}

// BenchmarkPresenceTopicMembersPage measures one page of 100 of
// Hub.TopicMembers, walking each topic from page to page (and from its end
// back to its start), for topics of 1,000, 10,000 and 100,000 members.
func BenchmarkPresenceTopicMembersPage(b *testing.B) {
	const page = 100
	h := presenceBenchHub(b)
	for _, size := range presenceBenchSizes {
		topic := presenceBenchTopic(size)
		b.Run(fmt.Sprintf("members=%d", size), func(b *testing.B) {
			b.ReportAllocs()
			cursor := ""
			for i := 0; i < b.N; i++ {
				members, next, err := h.TopicMembers(bg, topic, cursor, page)
				if err != nil || len(members) != page {
					b.Fatalf("page after %q: %d members, %v", cursor, len(members), err)
				}
				cursor = next
			}
		})
	}
}
