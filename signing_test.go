package wshub

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/backplane/memory"
	wsredis "github.com/wshub/wshub/backplane/redis"
	"github.com/wshub/wshub/internal/envelope"
	"github.com/wshub/wshub/internal/redistest"
)

var (
	signKey1 = []byte("wshub-test-signing-key-1")
	signKey2 = []byte("wshub-test-signing-key-2")
	otherKey = []byte("someone-else's-signing-key")
)

// outsider has access to a cluster's bus without being a hub: it publishes
// what it likes on the hubs' channels and reads what they publish.
type outsider struct {
	t *testing.T
	// publish publishes payload on the hubs' channel.
	publish func(channel string, payload []byte)
	// capture subscribes to the hubs' channel and returns a func that
	// waits for the next message on it.
	capture func(channel string) (next func() []byte)
}

// signingBackend starts one hub per entry of keys, node i with
// SigningKeys keys[i], and an outsider on their bus.
type signingBackend struct {
	name  string
	start func(t *testing.T, tweak func(i int, o *Options), keys ...[][]byte) (*cluster, *outsider)
}

var signingBackends = []signingBackend{
	{"memory", startMemorySigning},
	{"redis", startRedisSigning},
}

func withKeys(keys [][][]byte, tweak func(i int, o *Options)) func(i int, o *Options) {
	return func(i int, o *Options) {
		o.SigningKeys = keys[i]
		if tweak != nil {
			tweak(i, o)
		}
	}
}

func startMemorySigning(t *testing.T, tweak func(i int, o *Options), keys ...[][]byte) (*cluster, *outsider) {
	bus := memory.NewBus()
	c := newClusterOnBus(t, bus, len(keys), withKeys(keys, tweak))
	return c, memoryOutsider(t, bus)
}

// memoryOutsider is an outsider on a node of bus of its own.
func memoryOutsider(t *testing.T, bus *memory.Bus) *outsider {
	node, err := bus.NewNode("outsider")
	require.NoError(t, err)
	t.Cleanup(func() { _ = node.Close() })
	var mu sync.Mutex
	captured := make(map[string]chan []byte)
	require.NoError(t, node.Start(func(m backplane.Message) {
		mu.Lock()
		defer mu.Unlock()
		select {
		case captured[m.Channel] <- m.Payload:
		default:
			t.Errorf("outsider: message on %s not read", m.Channel)
		}
	}))
	return &outsider{
		t: t,
		publish: func(channel string, payload []byte) {
			require.NoError(t, node.Publish(bg, channel, payload))
		},
		capture: func(channel string) func() []byte {
			ch := make(chan []byte, 16)
			mu.Lock()
			captured[channel] = ch
			mu.Unlock()
			require.NoError(t, node.Subscribe(bg, channel))
			return func() []byte {
				select {
				case p := <-ch:
					return p
				case <-time.After(waitFor):
					t.Fatalf("outsider: nothing published on %s", channel)
					return nil
				}
			}
		},
	}
}

func startRedisSigning(t *testing.T, tweak func(i int, o *Options), keys ...[][]byte) (*cluster, *outsider) {
	srv := redistest.Start(t)
	prefix := "signing-" + randomHex() + ":"
	mk := redisPubSub(wsredis.Options{})
	c := newClusterOn(t, len(keys), withKeys(keys, tweak), func(t *testing.T, name string) (backplane.Backplane, func() uint64) {
		client := goredis.NewClient(&goredis.Options{Addr: srv.Addr()})
		t.Cleanup(func() { _ = client.Close() })
		bp, received, err := mk(client, prefix)
		require.NoError(t, err)
		return bp, received
	})
	rc := srv.Client(t)
	return c, &outsider{
		t: t,
		publish: func(channel string, payload []byte) {
			require.NoError(t, rc.Publish(bg, prefix+channel, payload).Err())
		},
		capture: func(channel string) func() []byte {
			sub := rc.Subscribe(bg, prefix+channel)
			t.Cleanup(func() { _ = sub.Close() })
			_, err := sub.Receive(bg) // the subscription's confirmation
			require.NoError(t, err)
			return func() []byte {
				ctx, cancel := context.WithTimeout(bg, waitFor)
				defer cancel()
				m, err := sub.ReceiveMessage(ctx)
				require.NoError(t, err)
				return []byte(m.Payload)
			}
		},
	}
}

func keys(k ...[]byte) [][]byte { return k }

// Hubs with the same keys deliver everything as without them, and count
// nothing as forged, the flush marker of Close included.
func TestSignedClusterDelivers(t *testing.T) {
	for _, be := range signingBackends {
		t.Run(be.name, func(t *testing.T) {
			c, out := be.start(t, nil, keys(signKey1), keys(signKey1))
			a, b := c.nodes[0], c.nodes[1]
			alice := dial(t, b, "alice")
			// What the hubs publish, as read off the bus, is signed for
			// its channel with the key.
			verifier := envelope.NewSigner(keys(signKey1))
			captured := map[string]func() []byte{}
			for _, ch := range []string{"u:alice", "t:room", "n:node1"} {
				captured[ch] = out.capture(ch)
			}
			signed := func(channel string, op envelope.Op) {
				t.Helper()
				e, err := verifier.Decode(channel, captured[channel]())
				require.NoError(t, err, "published on %s", channel)
				assert.Equal(t, op, e.Op)
			}

			require.NoError(t, a.hub.Send(bg, "alice", Text("hello")))
			assert.Equal(t, "hello", alice.nextText())
			signed("u:alice", envelope.OpUser)
			require.NoError(t, a.hub.SendSession(bg, b.sessions("alice")[0].ID(), Binary([]byte{1, 2})))
			assert.Equal(t, Binary([]byte{1, 2}), alice.next())
			signed("n:node1", envelope.OpSession)
			require.NoError(t, a.hub.Join(bg, "alice", "room"))
			c.waitJoined("alice", "room", true)
			signed("u:alice", envelope.OpJoin)
			require.NoError(t, a.hub.Broadcast(bg, "room", Text("news")))
			assert.Equal(t, "news", alice.nextText())
			signed("t:room", envelope.OpTopic)
			require.NoError(t, a.hub.Leave(bg, "alice", "room"))
			c.waitJoined("alice", "room", false)
			signed("u:alice", envelope.OpLeave)
			require.NoError(t, a.hub.Disconnect(bg, "alice", 4001, "bye"))
			assert.Equal(t, StatusCode(4001), alice.closed())
			signed("u:alice", envelope.OpDisconnect)

			ctx, cancel := context.WithTimeout(bg, waitFor)
			defer cancel()
			require.NoError(t, b.hub.Close(ctx))
			signed("n:node1", envelope.OpFlush)
			for _, n := range c.nodes {
				assert.Zero(t, n.hub.Stats().Forged, n.hub.NodeID())
				assert.Zero(t, n.hub.Stats().Malformed, n.hub.NodeID())
			}
		})
	}
}

// Someone who can publish on the bus but lacks the key can neither deliver,
// nor join, nor disconnect: unsigned envelopes, tampered or truncated ones,
// those signed with another key and real ones moved to another channel are
// dropped and counted, and real messages after them arrive.
func TestForgedEnvelopesAreDroppedAndCounted(t *testing.T) {
	for _, be := range signingBackends {
		t.Run(be.name, func(t *testing.T) {
			c, out := be.start(t, nil, keys(signKey1), keys(signKey1))
			a, b := c.nodes[0], c.nodes[1]
			alice, carol := dial(t, b, "alice"), dial(t, b, "carol")

			// Real signed messages, as the outsider reads them off the bus.
			toAlice, toCarol := out.capture("u:alice"), out.capture("u:carol")
			require.NoError(t, a.hub.Send(bg, "alice", Text("original")))
			assert.Equal(t, "original", alice.nextText())
			realAlice := toAlice()
			require.NoError(t, a.hub.Send(bg, "carol", Text("for carol")))
			assert.Equal(t, "for carol", carol.nextText())
			realCarol := toCarol()
			verifier := envelope.NewSigner(keys(signKey1))
			_, errA := verifier.Decode("u:alice", realAlice)
			_, errC := verifier.Decode("u:carol", realCarol)
			require.NoError(t, errors.Join(errA, errC), "the hubs sign what they publish")

			tampered := bytes.Clone(realAlice)
			tampered[len(tampered)-envelope.TagSize-1] ^= 1 // the payload's last byte
			otherSigner := envelope.NewSigner(keys(otherKey))
			forged := [][]byte{
				(&envelope.Envelope{Op: envelope.OpUser, Target: "alice", Payload: []byte("unsigned")}).Encode(),
				(&envelope.Envelope{Op: envelope.OpJoin, Target: "alice", Arg: "secret"}).Encode(),
				(&envelope.Envelope{Op: envelope.OpDisconnect, Target: "alice", Arg: "forged", Code: 4000}).Encode(),
				tampered,
				realAlice[:len(realAlice)-1],
				realAlice[:len(realAlice)-envelope.TagSize],
				otherSigner.Encode("u:alice", &envelope.Envelope{Op: envelope.OpUser, Target: "alice", Payload: []byte("other key")}),
				otherSigner.Encode("u:alice", &envelope.Envelope{Op: envelope.OpJoin, Target: "alice", Arg: "secret"}),
				otherSigner.Encode("u:alice", &envelope.Envelope{Op: envelope.OpDisconnect, Target: "alice", Arg: "forged", Code: 4000}),
				realCarol, // carol's real message, moved to alice's channel
			}
			for _, p := range forged {
				out.publish("u:alice", p)
			}
			require.Eventually(t, func() bool { return b.hub.Stats().Forged == uint64(len(forged)) }, waitFor, time.Millisecond,
				"every forged envelope is counted")

			require.NoError(t, a.hub.Send(bg, "alice", Text("real")))
			require.NoError(t, a.hub.Send(bg, "carol", Text("real carol")))
			assert.Equal(t, "real", alice.nextText(), "nothing forged was delivered before it")
			assert.Equal(t, "real carol", carol.nextText(), "carol's message was not delivered again")
			assert.Empty(t, b.sessions("alice")[0].Topics(), "no forged join was obeyed")
			assert.Equal(t, 2, b.hub.Stats().Sessions, "no forged disconnect was obeyed")
			select {
			case <-alice.done:
				t.Fatalf("alice's connection ended: %v", alice.err)
			default:
			}
			st := b.hub.Stats()
			assert.EqualValues(t, len(forged), st.Forged)
			assert.Zero(t, st.Malformed)
		})
	}
}

// Keys rotate: a hub signs with its first key and accepts a tag by any of
// its keys, whatever their order, so that the new key can be added
// everywhere, then moved first, then the old one removed.
func TestSigningKeyRotation(t *testing.T) {
	for _, be := range signingBackends {
		t.Run(be.name, func(t *testing.T) {
			c, _ := be.start(t, nil, keys(signKey2, signKey1), keys(signKey1, signKey2), keys(signKey1))
			rotated, both, old := c.nodes[0], c.nodes[1], c.nodes[2]
			clients := []*client{dial(t, rotated, "alice"), dial(t, both, "alice"), dial(t, old, "alice")}

			// Signed with the new key: accepted where it is known.
			require.NoError(t, rotated.hub.Send(bg, "alice", Text("new key")))
			assert.Equal(t, "new key", clients[0].nextText())
			assert.Equal(t, "new key", clients[1].nextText())
			require.Eventually(t, func() bool { return old.hub.Stats().Forged == 1 }, waitFor, time.Millisecond,
				"a hub without the new key drops what it signs")

			// Signed with the old key: accepted by every hub that still has it.
			require.NoError(t, old.hub.Send(bg, "alice", Text("old key")))
			for i, cl := range clients {
				assert.Equal(t, "old key", cl.nextText(), "node %d", i)
			}
			assert.Zero(t, rotated.hub.Stats().Forged)
			assert.Zero(t, both.hub.Stats().Forged)
			assert.EqualValues(t, 1, old.hub.Stats().Forged)
		})
	}
}

// A hub without keys takes a signed envelope for malformed: it never
// delivers the tag as part of the payload.
func TestUnsignedHubDropsSignedEnvelopeAsMalformed(t *testing.T) {
	for _, be := range signingBackends {
		t.Run(be.name, func(t *testing.T) {
			c, _ := be.start(t, nil, keys(signKey1), nil)
			signed, plain := c.nodes[0], c.nodes[1]
			alice := dial(t, plain, "alice")
			require.NoError(t, signed.hub.Send(bg, "alice", Text("signed")))
			require.Eventually(t, func() bool { return plain.hub.Stats().Malformed == 1 }, waitFor, time.Millisecond)
			require.NoError(t, plain.hub.Send(bg, "alice", Text("plain")))
			assert.Equal(t, "plain", alice.nextText())
			assert.Zero(t, plain.hub.Stats().Forged)
		})
	}
}

// A resume does not replay what an outsider wrote into a channel's log.
func TestResumeSkipsForgedLogEntries(t *testing.T) {
	c := newLogCluster(t, 1, 1000, func(i int, o *Options) { o.SigningKeys = keys(signKey1) })
	n := c.nodes[0]
	out := memoryOutsider(t, c.bus)
	first := dialResume(t, n, "alice")
	require.NoError(t, n.hub.Send(bg, "alice", Text("m0")))
	head, p := first.nextFramed()
	require.Equal(t, "m0", p)
	require.NoError(t, first.conn.CloseNow())
	require.Eventually(t, func() bool { return len(n.sessions("alice")) == 0 }, waitFor, time.Millisecond)

	out.publish("u:alice", (&envelope.Envelope{Op: envelope.OpUser, Target: "alice", Payload: []byte("forged")}).Encode())
	require.NoError(t, n.hub.Send(bg, "alice", Text("m1")))
	again := dialResume(t, n, "alice", head)
	h, p := again.nextFramed()
	assert.Equal(t, "m1", p, "the forged entry is skipped")
	assert.True(t, strings.HasSuffix(h, " u:alice"), "head %q", h)
	h, _ = again.nextFramed()
	assert.True(t, strings.HasPrefix(h, "!recovered "), "head %q", h)
	assert.GreaterOrEqual(t, n.hub.Stats().Forged, uint64(1))
}

// warnCounter counts the Warn records about signatures.
type warnCounter struct{ n *atomic.Int64 }

func (w warnCounter) Enabled(context.Context, slog.Level) bool { return true }
func (w warnCounter) Handle(_ context.Context, r slog.Record) error {
	if r.Level == slog.LevelWarn && strings.Contains(r.Message, "signature") {
		w.n.Add(1)
	}
	return nil
}
func (w warnCounter) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w warnCounter) WithGroup(string) slog.Handler      { return w }

// Forged messages are logged at most once a second, however many arrive.
func TestForgedMessagesAreLoggedAtMostOnceASecond(t *testing.T) {
	var warns atomic.Int64
	c, out := startMemorySigning(t, func(i int, o *Options) { o.Logger = slog.New(warnCounter{&warns}) }, keys(signKey1))
	n := c.nodes[0]
	alice := dial(t, n, "alice")
	const forged = 50
	start := time.Now()
	for i := 0; i < forged; i++ {
		out.publish("u:alice", (&envelope.Envelope{Op: envelope.OpUser, Target: "alice", Payload: []byte("x")}).Encode())
	}
	require.Eventually(t, func() bool { return n.hub.Stats().Forged == forged }, waitFor, time.Millisecond)
	elapsed := time.Since(start)
	assert.GreaterOrEqual(t, warns.Load(), int64(1), "forged messages are logged")
	assert.LessOrEqual(t, warns.Load(), 1+int64(elapsed/time.Second), "at most once a second")
	require.NoError(t, n.hub.Send(bg, "alice", Text("real")))
	assert.Equal(t, "real", alice.nextText())
}
