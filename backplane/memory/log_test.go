package memory_test

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/backplane/memory"
)

var bg = context.Background()

// logPeer is a started node whose handler keeps every message, offsets
// included.
type logPeer struct {
	*memory.Node
	msgs chan backplane.Message
}

func newLogPeer(t *testing.T, bus *memory.Bus, name string, channels ...string) *logPeer {
	t.Helper()
	n, err := bus.NewNode(name)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, n.Close()) })
	p := &logPeer{Node: n, msgs: make(chan backplane.Message, 10000)}
	require.NoError(t, n.Start(func(m backplane.Message) { p.msgs <- m }))
	if len(channels) > 0 {
		require.NoError(t, n.Subscribe(bg, channels...))
	}
	return p
}

// next returns the next message p receives.
func (p *logPeer) next(t *testing.T) backplane.Message {
	t.Helper()
	return receive(t, p.msgs, p.Name(), "message")
}

// publishN publishes "0".."k-1" from p on channel and returns what the
// subscriber sub received of them.
func publishN(t *testing.T, p, sub *logPeer, channel string, k int) []backplane.Message {
	t.Helper()
	for i := range k {
		require.NoError(t, p.Publish(bg, channel, []byte(strconv.Itoa(i))))
	}
	got := make([]backplane.Message, k)
	for i := range got {
		got[i] = sub.next(t)
		require.Equal(t, strconv.Itoa(i), string(got[i].Payload))
	}
	return got
}

func newLogBus(t *testing.T, messages int) *memory.Bus {
	t.Helper()
	bus := memory.NewBus()
	require.NoError(t, bus.SetLogLimit(messages, 0))
	return bus
}

func TestLogsAreOffByDefault(t *testing.T) {
	bus := memory.NewBus()
	a := newLogPeer(t, bus, "a", "ch")
	require.NoError(t, a.Publish(bg, "ch", []byte("x")))
	assert.Empty(t, a.next(t).Offset, "no offset without logs")
	for _, off := range []string{"", "0000000000000001:0000000000000001"} {
		_, err := a.Read(bg, "ch", off, 10)
		assert.ErrorIs(t, err, backplane.ErrNotRetained, "Read(%q) without logs", off)
	}
}

func TestLogOffsets(t *testing.T) {
	bus := newLogBus(t, 100)
	a := newLogPeer(t, bus, "a", "ch", "other")
	got := publishN(t, a, a, "ch", 3)
	form := regexp.MustCompile(`^[0-9a-f]{16}:[0-9a-f]{16}$`)
	epoch, _ := backplane.SplitOffset(got[0].Offset)
	for i, m := range got {
		assert.Regexp(t, form, m.Offset)
		assert.Equal(t, fmt.Sprintf("%s:%016x", epoch, i+1), m.Offset, "positions count the channel's messages from 1")
	}
	require.NoError(t, a.Publish(bg, "other", []byte("o")))
	o := a.next(t).Offset
	oe, op := backplane.SplitOffset(o)
	assert.NotEqual(t, epoch, oe, "every channel's log has its own epoch")
	assert.Equal(t, "0000000000000001", op)

	// A message published to a channel no node holds is logged too.
	require.NoError(t, a.Publish(bg, "nobody", []byte("n")))
	e, err := a.Read(bg, "nobody", "", 10)
	require.NoError(t, err)
	require.Len(t, e, 1)
	assert.Equal(t, "n", string(e[0].Payload))
}

// Concurrent publishers on one channel: every node receives the messages
// in the order of their offsets, and the log holds them in that order.
func TestLogOrderIsTheDeliveryOrder(t *testing.T) {
	const pubs, each = 4, 300
	bus := newLogBus(t, pubs*each)
	var subs []*logPeer
	for i := range 3 {
		subs = append(subs, newLogPeer(t, bus, fmt.Sprint("s", i), "ch"))
	}
	var wg sync.WaitGroup
	for p := range pubs {
		pub := newLogPeer(t, bus, fmt.Sprint("p", p))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				assert.NoError(t, pub.Publish(bg, "ch", []byte(fmt.Sprint(p, ".", i))))
			}
		}()
	}
	wg.Wait()
	var first []string
	for _, s := range subs {
		var seq []string
		prev := ""
		for range pubs * each {
			m := s.next(t)
			require.Greater(t, m.Offset, prev, "%s: offsets grow in arrival order", s.Name())
			prev = m.Offset
			seq = append(seq, m.Offset+" "+string(m.Payload))
		}
		if first == nil {
			first = seq
		} else {
			require.Equal(t, first, seq, "%s receives what s0 receives, in the same order", s.Name())
		}
	}
	entries, err := subs[0].Read(bg, "ch", "", pubs*each+1)
	require.NoError(t, err)
	var logged []string
	for _, e := range entries {
		logged = append(logged, e.Offset+" "+string(e.Payload))
	}
	assert.Equal(t, first, logged, "the log holds them in delivery order")
}

func TestLogRead(t *testing.T) {
	bus := newLogBus(t, 10)
	a := newLogPeer(t, bus, "a", "ch")
	reader := newLogPeer(t, bus, "reader") // holds no channel
	got := publishN(t, a, a, "ch", 25)     // 15 dropped by retention

	all, err := reader.Read(bg, "ch", "", 100)
	require.NoError(t, err)
	require.Len(t, all, 10)
	assert.Equal(t, got[15].Offset, all[0].Offset, "from the oldest retained")
	assert.Equal(t, "24", string(all[9].Payload))

	page, err := reader.Read(bg, "ch", got[15].Offset, 3)
	require.NoError(t, err)
	require.Len(t, page, 3, "paged by limit")
	assert.Equal(t, []string{"16", "17", "18"}, payloads(page))

	last, err := reader.Read(bg, "ch", got[24].Offset, 3)
	require.NoError(t, err)
	assert.Empty(t, last, "up to date")

	_, err = reader.Read(bg, "ch", got[14].Offset, 3)
	assert.ErrorIs(t, err, backplane.ErrNotRetained, "the offset's message was dropped, as on Redis Streams")
	_, err = reader.Read(bg, "ch", got[0].Offset, 3)
	assert.ErrorIs(t, err, backplane.ErrNotRetained)

	epoch, _ := backplane.SplitOffset(got[0].Offset)
	for _, off := range []string{
		epoch + ":" + "ffffffffffffffff", // beyond the end
		fmt.Sprintf("%s:%016x", epoch, 26),
		"garbage", epoch, epoch + ":", epoch + ":0000000000000001x", epoch + ":000000000000000A",
		"x" + got[20].Offset[1:], ":" + got[20].Offset,
	} {
		_, err = reader.Read(bg, "ch", off, 3)
		assert.ErrorIs(t, err, backplane.ErrInvalidOffset, "Read after %q", off)
	}
	_, err = reader.Read(bg, "ch", "0123456789abcdef:0000000000000001", 3)
	assert.ErrorIs(t, err, backplane.ErrNotRetained, "an offset of another epoch")
	_, err = reader.Read(bg, "never", "0123456789abcdef:0000000000000001", 3)
	assert.ErrorIs(t, err, backplane.ErrNotRetained, "an offset on a channel without a log")
	none, err := reader.Read(bg, "never", "", 3)
	require.NoError(t, err)
	assert.Empty(t, none)

	_, err = reader.Read(bg, "ch", "", 0)
	assert.Error(t, err, "limit 0")
	_, err = reader.Read(bg, "", "", 1)
	assert.ErrorIs(t, err, backplane.ErrInvalidChannel)

	require.NoError(t, bus.Partition("reader"))
	_, err = reader.Read(bg, "ch", "", 1)
	assert.ErrorIs(t, err, backplane.ErrUnavailable, "a partitioned node cannot read")
	require.NoError(t, bus.Heal("reader"))
	_, err = reader.Read(bg, "ch", "", 1)
	assert.NoError(t, err)
}

func payloads(es []backplane.Entry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = string(e.Payload)
	}
	return out
}

func TestDropLog(t *testing.T) {
	bus := newLogBus(t, 100)
	a := newLogPeer(t, bus, "a", "ch", "kept")
	old := publishN(t, a, a, "ch", 2)
	kept := publishN(t, a, a, "kept", 1)
	require.NoError(t, bus.DropLog("ch"))
	require.NoError(t, bus.DropLog("no-log"), "a channel without a log")
	assert.ErrorIs(t, bus.DropLog(""), backplane.ErrInvalidChannel)

	_, err := a.Read(bg, "ch", old[0].Offset, 10)
	assert.ErrorIs(t, err, backplane.ErrNotRetained, "the log was lost")
	e, err := a.Read(bg, "ch", "", 10)
	require.NoError(t, err)
	assert.Empty(t, e)
	e, err = a.Read(bg, "kept", kept[0].Offset, 10)
	require.NoError(t, err, "other channels keep their logs")
	assert.Empty(t, e)

	fresh := publishN(t, a, a, "ch", 1)[0].Offset
	oe, _ := backplane.SplitOffset(old[1].Offset)
	fe, fp := backplane.SplitOffset(fresh)
	assert.NotEqual(t, oe, fe, "a new log, a new epoch")
	assert.Equal(t, "0000000000000001", fp)
	assert.True(t, backplane.OffsetAfter(fresh, old[1].Offset))
	_, err = a.Read(bg, "ch", old[1].Offset, 10)
	assert.ErrorIs(t, err, backplane.ErrNotRetained, "an offset of the lost log")

	bus.DropLogs()
	for _, m := range []backplane.Message{kept[0], {Channel: "ch", Offset: fresh}} {
		_, err = a.Read(bg, m.Channel, m.Offset, 10)
		assert.ErrorIs(t, err, backplane.ErrNotRetained, "DropLogs drops %s", m.Channel)
	}
}

// A log whose messages all expired is dropped: its channel's next message
// starts a new epoch.
func TestLogAge(t *testing.T) {
	bus := memory.NewBus()
	const age = time.Millisecond
	require.NoError(t, bus.SetLogLimit(100, age))
	a := newLogPeer(t, bus, "a", "ch")
	old := publishN(t, a, a, "ch", 1)[0]
	time.Sleep(20 * age) // the message is older than age after this, however slow the machine
	_, err := a.Read(bg, "ch", old.Offset, 10)
	assert.ErrorIs(t, err, backplane.ErrNotRetained)
	e, err := a.Read(bg, "ch", "", 10)
	require.NoError(t, err)
	assert.Empty(t, e, "expired")
	fresh := publishN(t, a, a, "ch", 1)[0]
	oe, _ := backplane.SplitOffset(old.Offset)
	fe, _ := backplane.SplitOffset(fresh.Offset)
	assert.NotEqual(t, oe, fe)
}

func TestSetLogLimit(t *testing.T) {
	bus := newLogBus(t, 100)
	for _, l := range []struct {
		msgs int
		age  time.Duration
	}{{-1, 0}, {1, -time.Second}, {0, time.Second}} {
		assert.Error(t, bus.SetLogLimit(l.msgs, l.age), "SetLogLimit(%d, %v)", l.msgs, l.age)
	}
	a := newLogPeer(t, bus, "a", "ch")
	got := publishN(t, a, a, "ch", 10)

	require.NoError(t, bus.SetLogLimit(4, 0), "lowering trims at once")
	e, err := a.Read(bg, "ch", "", 100)
	require.NoError(t, err)
	assert.Equal(t, []string{"6", "7", "8", "9"}, payloads(e))

	require.NoError(t, bus.SetLogLimit(0, 0), "off")
	assert.Empty(t, publishN(t, a, a, "ch", 1)[0].Offset)
	_, err = a.Read(bg, "ch", "", 10)
	assert.ErrorIs(t, err, backplane.ErrNotRetained)

	require.NoError(t, bus.SetLogLimit(memory.DefaultLogMessages, memory.DefaultLogAge), "on again")
	_, err = a.Read(bg, "ch", got[9].Offset, 10)
	assert.ErrorIs(t, err, backplane.ErrNotRetained, "turning logs off dropped them")
	fresh := publishN(t, a, a, "ch", 1)[0].Offset
	assert.NotEmpty(t, fresh)
	oe, _ := backplane.SplitOffset(got[9].Offset)
	fe, _ := backplane.SplitOffset(fresh)
	assert.NotEqual(t, oe, fe)
}

// Offsets of one bus are of another epoch on any other bus, as those of a
// Redis server that lost its data.
func TestEpochsDifferAcrossBuses(t *testing.T) {
	one, two := newLogBus(t, 10), newLogBus(t, 10)
	a, b := newLogPeer(t, one, "a", "ch"), newLogPeer(t, two, "b", "ch")
	oa := publishN(t, a, a, "ch", 1)[0].Offset
	ob := publishN(t, b, b, "ch", 1)[0].Offset
	assert.NotEqual(t, oa, ob)
	_, err := b.Read(bg, "ch", oa, 10)
	assert.ErrorIs(t, err, backplane.ErrNotRetained)
}
