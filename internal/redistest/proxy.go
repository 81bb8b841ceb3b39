package redistest

import (
	"errors"
	"net"
	"sync"
	"testing"
)

// proxyState is what a Proxy does with traffic.
type proxyState int

const (
	proxyForward proxyState = iota // forward bytes
	proxyCut                       // close every connection
	proxyFrozen                    // keep connections open, forward nothing
)

// Proxy is a TCP proxy on 127.0.0.1 in front of a target address, for cut
// tests: Cut, Freeze and Heal break and mend the link between clients and
// the target. Its methods may be called from any goroutine.
type Proxy struct {
	target string
	ln     net.Listener
	wg     sync.WaitGroup // the accept loop and every connection's goroutines

	mu     sync.Mutex
	state  proxyState
	closed bool
	conns  map[*proxyConn]struct{}
}

// proxyConn is one proxied connection: the client's end and the target's.
type proxyConn struct {
	client   net.Conn
	upstream net.Conn // nil if accepted while frozen: never forwarded
	frozen   bool     // guarded by Proxy.mu: drop bytes instead of forwarding
	once     sync.Once
}

// close closes both ends.
func (pc *proxyConn) close() {
	pc.once.Do(func() {
		_ = pc.client.Close()
		if pc.upstream != nil {
			_ = pc.upstream.Close()
		}
	})
}

// NewProxy starts a proxy on a free port of 127.0.0.1 that forwards every
// connection to target. tb's cleanup closes the listener and every
// connection and waits for the proxy's goroutines to end.
func NewProxy(tb testing.TB, target string) *Proxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("redistest: proxy listen: %v", err)
	}
	p := &Proxy{target: target, ln: ln, conns: make(map[*proxyConn]struct{})}
	p.wg.Add(1)
	go p.acceptLoop()
	tb.Cleanup(p.close)
	return p
}

// Addr returns the address clients dial, "127.0.0.1:port".
func (p *Proxy) Addr() string {
	return p.ln.Addr().String()
}

// Cut closes every open connection and refuses new ones (accepts them and
// closes them at once) until Heal.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.state = proxyCut
	p.closeConnsLocked(func(*proxyConn) bool { return true })
}

// Freeze keeps connections open but stops forwarding bytes in both
// directions, like a silent dead link: what is sent is dropped. New
// connections are accepted but not forwarded. It lasts until Heal, which
// drops the frozen connections so that clients reconnect.
func (p *Proxy) Freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.state = proxyFrozen
	for pc := range p.conns {
		pc.frozen = true
	}
}

// Heal makes the proxy forward again after Cut or Freeze, closing the
// connections that were frozen.
func (p *Proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.state = proxyForward
	p.closeConnsLocked(func(pc *proxyConn) bool { return pc.frozen })
}

// Conns returns the number of currently open proxied connections,
// including frozen ones.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// close stops the proxy and waits for its goroutines.
func (p *Proxy) close() {
	p.mu.Lock()
	p.closed = true
	_ = p.ln.Close()
	p.closeConnsLocked(func(*proxyConn) bool { return true })
	p.mu.Unlock()
	p.wg.Wait()
}

// closeConnsLocked closes and forgets the connections that match. p.mu must
// be held.
func (p *Proxy) closeConnsLocked(match func(*proxyConn) bool) {
	for pc := range p.conns {
		if match(pc) {
			pc.close()
			delete(p.conns, pc)
		}
	}
}

// remove closes pc and forgets it.
func (p *Proxy) remove(pc *proxyConn) {
	pc.close()
	p.mu.Lock()
	delete(p.conns, pc)
	p.mu.Unlock()
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return // closed
		}
		p.mu.Lock()
		if p.closed || p.state == proxyCut {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		p.wg.Add(1) // the loop's own count keeps the group above zero
		p.mu.Unlock()
		go p.handle(c)
	}
}

// handle connects c to the target (unless frozen) and forwards c's bytes.
func (p *Proxy) handle(c net.Conn) {
	defer p.wg.Done()
	p.mu.Lock()
	state := p.state
	p.mu.Unlock()
	var up net.Conn
	if state == proxyForward {
		var err error
		up, err = net.DialTimeout("tcp", p.target, dialTimeout)
		if err != nil {
			_ = c.Close()
			return
		}
	}
	pc := &proxyConn{client: c, upstream: up}
	p.mu.Lock()
	if p.closed || p.state == proxyCut {
		p.mu.Unlock()
		pc.close()
		return
	}
	pc.frozen = p.state == proxyFrozen || up == nil
	p.conns[pc] = struct{}{}
	if up != nil {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.pipe(pc, up, c)
		}()
	}
	p.mu.Unlock()
	p.pipe(pc, c, up)
}

// pipe copies from src to dst, dropping what it reads while pc is frozen,
// until either end fails; then it closes both.
func (p *Proxy) pipe(pc *proxyConn, src, dst net.Conn) {
	defer p.remove(pc)
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			frozen := pc.frozen
			p.mu.Unlock()
			if !frozen && dst != nil {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			return
		}
	}
}
