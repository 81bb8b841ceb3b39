package redis_test

import (
	"bytes"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/backplane"
	wsredis "github.com/wshub/wshub/backplane/redis"
	"github.com/wshub/wshub/internal/redistest"
)

// delayProxy forwards to target; Cut closes every connection and refuses
// new ones; when armed, the client->server bytes that follow a chunk
// holding SUBSCRIBE of the marker are held back for delay.
type delayProxy struct {
	target string
	ln     net.Listener
	wg     sync.WaitGroup
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]struct{}
	armed  atomic.Bool
	marker []byte
	delay  time.Duration
}

func newDelayProxy(t *testing.T, target string, marker string, delay time.Duration) *delayProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &delayProxy{target: target, ln: ln, conns: map[net.Conn]struct{}{}, marker: []byte(marker), delay: delay}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.cut {
				p.mu.Unlock()
				c.Close()
				continue
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				p.mu.Unlock()
				c.Close()
				continue
			}
			p.conns[c] = struct{}{}
			p.conns[u] = struct{}{}
			p.mu.Unlock()
			p.wg.Add(2)
			go func() { defer p.wg.Done(); io.Copy(c, u); c.Close(); u.Close() }()
			go func() {
				defer p.wg.Done()
				defer c.Close()
				defer u.Close()
				buf := make([]byte, 64<<10)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						chunk := buf[:n]
						if p.armed.Load() && bytes.Contains(bytes.ToLower(chunk), []byte("subscribe")) && bytes.Contains(chunk, p.marker) {
							p.armed.Store(false)
							// Split before the PING, as TCP may: Redis runs the
							// SUBSCRIBE, then other clients, then the PING.
							i := bytes.Index(chunk, []byte("*2\r\n$4\r\nping"))
							if i > 0 {
								println("split before PING")
								if _, werr := u.Write(chunk[:i]); werr != nil {
									return
								}
								time.Sleep(p.delay)
								chunk = chunk[i:]
							}
						}
						if _, werr := u.Write(chunk); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); p.doCut(); p.wg.Wait() })
	return p
}

func (p *delayProxy) doCut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

func (p *delayProxy) heal() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}

// A wake-up that reaches a reconnected node before its catch-up has run
// must not move the node's position past what it missed: the catch-up
// delivers everything, in order.
func TestStreamsWakeUpBeforeCatchUpLosesNothing(t *testing.T) {
	const ch = "c:race"
	srv := redistest.Start(t)
	proxy := newDelayProxy(t, srv.Addr(), ch, 300*time.Millisecond)
	o := wsredis.StreamsOptions{Options: wsredis.Options{Prefix: "t" + randomHex() + ":", ProbeInterval: time.Second}}
	a := newStreamsNode(t, srv.Addr(), o)
	b := newStreamsNode(t, proxy.ln.Addr().String(), o)
	require.NoError(t, b.Subscribe(bg, ch))
	seq := 0
	pub := func() { require.NoError(t, a.Publish(bg, ch, []byte(strconv.Itoa(seq)))); seq++ }
	for range 5 {
		pub()
	}
	require.Eventually(t, func() bool { return b.rec.count(ch) == 5 }, 5*time.Second, time.Millisecond)
	proxy.doCut()
	b.events.waitKind(t, backplane.EventDown, 0)
	for range 100 { // missed while cut off
		pub()
	}
	proxy.armed.Store(true)
	proxy.heal()
	// Publish while the reconnecting subscription waits for its PONG.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		pub()
		time.Sleep(10 * time.Millisecond)
	}
	b.events.waitKind(t, backplane.EventRestored, 0)
	time.Sleep(200 * time.Millisecond)
	got, _ := b.rec.on(ch)
	want := make([]int, seq)
	for i := range want {
		want[i] = i
	}
	t.Logf("events %v stats %+v", b.events.all(), b.Stats())
	checkSeq(t, "B", got, want)
}
