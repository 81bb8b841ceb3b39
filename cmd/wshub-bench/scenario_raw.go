package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// runRaw: the same clients and messages as broadcast or idle (-raw-of),
// served by a bare coder/websocket handler with no hub, as a ceiling. Its
// scenario field reads raw-broadcast or raw-idle, backplane "none", and it
// ignores -batch: it is the ceiling without batching.
func runRaw(ctx context.Context, e *env) (result, error) {
	e.res.Scenario, e.res.Backplane, e.res.Nodes, e.res.Batch = "raw-"+e.cfg.rawOf, "none", 1, false
	if e.cfg.batch {
		e.logf("raw ignores -batch: it is the ceiling without batching")
	}
	idle := e.cfg.rawOf == "idle"
	if idle {
		e.res.Msgs, e.res.Size = 0, 0
	}
	raw, err := e.setUpRaw(ctx, e.cfg.conns)
	if err != nil {
		return result{}, err
	}
	if idle {
		raw.describe(e.log)
		return e.res, nil
	}
	return e.traffic(ctx, traffic{
		send:    raw.broadcast,
		expect:  int64(e.cfg.msgs) * int64(e.cfg.conns),
		rate:    e.cfg.rate,
		callers: 1,
	})
}

// rawServer is the ceiling: a bare coder/websocket server with no hub. It
// keeps a slice of connections, reads each in its own goroutine like every
// server must, and broadcasts by looping over the slice with one Write per
// connection under a context with a deadline, as a naive server does.
type rawServer struct {
	ln       *listener
	typ      websocket.MessageType
	timeout  time.Duration
	handlers sync.WaitGroup

	mu     sync.Mutex
	closed bool
	list   atomic.Pointer[[]*websocket.Conn] // copy on write

	writeErrs atomic.Int64
}

func startRaw(typ websocket.MessageType, log *slog.Logger) (*rawServer, error) {
	s := &rawServer{typ: typ, timeout: 10 * time.Second}
	s.list.Store(new([]*websocket.Conn))
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", s.serve)
	l, err := listen(mux, log)
	if err != nil {
		return nil, err
	}
	s.ln = l
	return s, nil
}

func (s *rawServer) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	s.handlers.Add(1)
	s.mu.Unlock()
	defer s.handlers.Done()

	conn, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	if !s.add(conn) {
		_ = conn.CloseNow()
		return
	}
	defer s.remove(conn)
	for {
		if _, _, err := conn.Read(r.Context()); err != nil {
			_ = conn.CloseNow()
			return
		}
	}
}

// add adds c to the list, unless the server is closing.
func (s *rawServer) add(c *websocket.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	old := *s.list.Load()
	list := make([]*websocket.Conn, len(old), len(old)+1)
	copy(list, old)
	list = append(list, c)
	s.list.Store(&list)
	return true
}

func (s *rawServer) remove(c *websocket.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := *s.list.Load()
	list := make([]*websocket.Conn, 0, len(old))
	for _, x := range old {
		if x != c {
			list = append(list, x)
		}
	}
	s.list.Store(&list)
}

// broadcast writes payload to every connection, one after the other, each
// write bounded by one per-message deadline. A connection whose write fails
// is closed.
func (s *rawServer) broadcast(ctx context.Context, payload []byte) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	for _, c := range *s.list.Load() {
		if err := c.Write(ctx, s.typ, payload); err != nil {
			s.writeErrs.Add(1)
			_ = c.CloseNow()
		}
	}
	return ctx.Err()
}

func (s *rawServer) urls() []string { return []string{s.ln.url} }

func (s *rawServer) conns() int { return len(*s.list.Load()) }

func (s *rawServer) describe(w io.Writer) {
	fmt.Fprintf(w, "wshub-bench: raw server: conns=%d write_errors=%d\n", s.conns(), s.writeErrs.Load())
}

func (s *rawServer) close(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	list := *s.list.Load()
	s.mu.Unlock()
	err := s.ln.shutdown(ctx)
	for _, c := range list {
		_ = c.CloseNow()
	}
	s.handlers.Wait()
	return err
}
