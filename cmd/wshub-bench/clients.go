package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/wshub/wshub"
)

// This file is the client process: the parent re-executes its own binary
// with "-role clients" and drives it with requests on stdin. Keeping the
// clients out of the parent's process keeps their memory and goroutines out
// of the server's measurements.

// dialTimeout bounds one WebSocket handshake.
const dialTimeout = 15 * time.Second

// childInvocation reports whether args (os.Args[1:]) start the client role,
// and returns the rest of them.
func childInvocation(args []string) ([]string, bool) {
	switch {
	case len(args) >= 2 && (args[0] == "-role" || args[0] == "--role") && args[1] == "clients":
		return args[2:], true
	case len(args) >= 1 && (args[0] == "-role=clients" || args[0] == "--role=clients"):
		return args[1:], true
	}
	return nil, false
}

// childMain runs the client role until the parent sends opClose or closes
// stdin, and returns the exit code. It exits the process by itself after
// -timeout, whatever the parent does.
func childMain(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("wshub-bench clients", flag.ContinueOnError)
	fs.SetOutput(stderr)
	timeout := fs.Duration("timeout", 3*time.Minute, "exit after this long whatever happens")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the client process to `file`")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	raiseNofile(stderr)
	if *cpuProfile != "" {
		stop, err := startCPUProfile(*cpuProfile)
		if err != nil {
			fmt.Fprintln(stderr, "wshub-bench clients:", err)
			return 2
		}
		defer stop()
	}
	guard := time.AfterFunc(*timeout, func() {
		fmt.Fprintln(stderr, "wshub-bench clients: -timeout reached, exiting")
		exit(3)
	})
	defer guard.Stop()

	// Requests are read on their own goroutine, so that the parent closing
	// stdin (it died, or gave up) cancels whatever is running.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reqs := make(chan request)
	go func() {
		defer close(reqs)
		defer cancel()
		dec := json.NewDecoder(stdin)
		for {
			var r request
			if err := dec.Decode(&r); err != nil {
				if !errors.Is(err, io.EOF) {
					fmt.Fprintln(stderr, "wshub-bench clients: reading requests:", err)
				}
				return
			}
			select {
			case reqs <- r:
			case <-ctx.Done():
				return
			}
		}
	}()

	cs := &clientSet{log: stderr}
	defer cs.closeAll()
	enc := json.NewEncoder(stdout)
	for r := range reqs {
		rep := cs.handle(ctx, r)
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintln(stderr, "wshub-bench clients: writing reply:", err)
			return 1
		}
		if r.Op == opClose {
			return 0
		}
	}
	return 0
}

// client is one WebSocket connection of the client process.
type client struct {
	idx    int
	conn   *websocket.Conn
	count  atomic.Int64 // messages received (records, in the batched framing)
	frames atomic.Int64 // WebSocket messages received
	maxLat atomic.Int64 // ns
	last   atomic.Int64 // latest arrival, ns since the epoch
	// closing is set before we close the connection ourselves; a reader
	// that ends without it was closed by the server.
	closing atomic.Bool
	done    chan struct{}
}

type clientSet struct {
	log io.Writer

	epoch   int64 // unix nanos
	bufSize int
	batch   bool // the batched framing: ask for it, split messages into records
	hist    histogram
	bad     atomic.Int64
	closedE atomic.Int64 // stable clients the server closed
	churnRx atomic.Int64 // messages received by churners

	mu      sync.Mutex
	http    map[int]*http.Client // by source address index
	stable  []*client
	readers sync.WaitGroup
	churn   *churner
}

func (cs *clientSet) handle(ctx context.Context, r request) reply {
	var (
		rep reply
		err error
	)
	switch r.Op {
	case opConnect:
		rep, err = cs.connect(ctx, r)
	case opDrain:
		rep = cs.drain(ctx, r)
	case opChurnStart:
		err = cs.startChurn(ctx, r)
	case opChurnStop:
		rep = cs.stopChurn()
	case opClose:
		cs.closeAll()
	default:
		err = fmt.Errorf("unknown op %q", r.Op)
	}
	if err != nil {
		rep.Err = err.Error()
	}
	rep.CPUNS = int64(cpuTime())
	return rep
}

// httpClient returns the HTTP client whose connections leave from source
// address 127.0.0.(1+i). One source address gives about 28k ephemeral ports
// (per server port, with bindAddressNoPort), so a large run spreads over
// several.
func (cs *clientSet) httpClient(i int) *http.Client {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if c := cs.http[i]; c != nil {
		return c
	}
	if cs.http == nil {
		cs.http = make(map[int]*http.Client)
	}
	ip := net.IPv4(127, 0, 0, byte(1+i%254))
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}, Timeout: dialTimeout, Control: bindAddressNoPort}
	c := &http.Client{Transport: &http.Transport{
		DialContext:         d.DialContext,
		Proxy:               nil,
		MaxIdleConnsPerHost: -1,
		DisableCompression:  true,
	}}
	cs.http[i] = c
	return c
}

func (cs *clientSet) dial(ctx context.Context, addr int, url string) (*websocket.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: cs.httpClient(addr)})
	if err != nil {
		return nil, err
	}
	conn.SetReadLimit(-1) // the server is ours; -size may be anything
	return conn, nil
}

// dialRetry dials with a few retries: a burst of thousands of handshakes can
// overflow the listener's backlog.
func (cs *clientSet) dialRetry(ctx context.Context, addr int, url string) (*websocket.Conn, error) {
	var err error
	for attempt := 0; attempt < 4; attempt++ {
		if attempt > 0 {
			select {
			case <-time.After(time.Duration(attempt) * 200 * time.Millisecond):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		var conn *websocket.Conn
		if conn, err = cs.dial(ctx, addr, url); err == nil {
			return conn, nil
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, err
}

// connect dials r.N stable clients, spread round-robin over r.URLs, and starts
// a reader for each.
func (cs *clientSet) connect(ctx context.Context, r request) (reply, error) {
	if len(r.URLs) == 0 || r.N <= 0 {
		return reply{}, errors.New("connect: no urls or no clients")
	}
	cs.mu.Lock()
	if cs.stable != nil {
		cs.mu.Unlock()
		return reply{}, errors.New("connect: already connected")
	}
	cs.epoch, cs.bufSize, cs.batch = r.Epoch, max(r.BufSize, 64), r.Batch
	cs.stable = make([]*client, r.N)
	cs.mu.Unlock()
	perAddr := max(r.PerAddr, 1)

	start := time.Now()
	sem := make(chan struct{}, max(r.DialConc, 1))
	var (
		wg       sync.WaitGroup
		failed   atomic.Int64
		firstErr atomic.Pointer[error]
	)
	for i := 0; i < r.N && ctx.Err() == nil; i++ {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			url := r.URLs[i%len(r.URLs)] + "?user=" + r.Prefix + strconv.Itoa(i) + cs.query()
			conn, err := cs.dialRetry(ctx, r.AddrBase+i/perAddr, url)
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, &err)
				return
			}
			c := &client{idx: i, conn: conn, done: make(chan struct{})}
			cs.mu.Lock()
			cs.stable[i] = c
			cs.mu.Unlock()
			cs.readers.Add(1)
			go cs.read(c, false)
		}()
	}
	wg.Wait()
	rep := reply{Connected: r.N - int(failed.Load()), DialNS: int64(time.Since(start))}
	if err := ctx.Err(); err != nil {
		return rep, err
	}
	if p := firstErr.Load(); p != nil {
		return rep, fmt.Errorf("connect: %d of %d clients failed, first: %w", failed.Load(), r.N, *p)
	}
	return rep, nil
}

// query returns what the clients add to their URL's query: the batched
// framing's parameter, if asked for.
func (cs *clientSet) query() string {
	if cs.batch {
		return "&" + wshub.BatchParam + "=1"
	}
	return ""
}

// read is a connection's reader: it only reads each message, takes the
// arrival time and records the latency. It allocates nothing per message.
//
// In the batched framing it reads each message whole into buf, which it
// reuses and grows when a message is larger, and records every record of it
// as a delivery, with the latency of the stamp at the start of the record.
func (cs *clientSet) read(c *client, churner bool) {
	defer cs.readers.Done()
	defer close(c.done)
	buf := make([]byte, cs.bufSize)
	ctx := context.Background() // no per-read timer; closing the conn ends the read
	var hdr [stampLen]byte
	for {
		_, r, err := c.conn.Reader(ctx)
		if err != nil {
			if !c.closing.Load() && !churner {
				cs.closedE.Add(1)
				if cs.closedE.Load() <= 3 {
					fmt.Fprintf(cs.log, "wshub-bench clients: client %d closed by the server: %v\n", c.idx, err)
				}
			}
			return
		}
		if cs.batch {
			if buf, err = readWhole(r, buf[:0]); err != nil {
				return
			}
			now := time.Now().UnixNano() - cs.epoch
			cs.records(c, churner, buf, now)
			continue
		}
		hn := 0
		for {
			n, err := r.Read(buf)
			if hn < stampLen {
				hn += copy(hdr[hn:], buf[:n])
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				return
			}
		}
		now := time.Now().UnixNano() - cs.epoch
		if churner {
			cs.churnRx.Add(1)
			continue
		}
		c.count.Add(1)
		c.frames.Add(1)
		c.last.Store(now)
		cs.observe(c, hdr[:hn], now)
	}
}

// readWhole appends the rest of the message r to buf, growing it (to twice
// its capacity at a time) when it is full, and returns it.
func readWhole(r io.Reader, buf []byte) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, max(cap(buf), 64))
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// records counts and observes the records of msg, a message of the batched
// framing that arrived at now. A message that ends in the middle of a
// record counts as one bad record from there on.
func (cs *clientSet) records(c *client, churner bool, msg []byte, now int64) {
	var n, bad int64
	for off := 0; off < len(msg); {
		typ, body, next, ok := nextRecord(msg, off)
		off = next
		if !ok {
			bad++
			break
		}
		n++
		if churner {
			continue
		}
		if typ != byte(websocket.MessageText) && typ != byte(websocket.MessageBinary) {
			bad++
			continue
		}
		cs.observe(c, body, now)
	}
	if bad > 0 {
		cs.bad.Add(bad)
	}
	if churner {
		cs.churnRx.Add(n)
		return
	}
	if n > 0 {
		c.count.Add(n)
		c.last.Store(now)
	}
	c.frames.Add(1)
}

// observe records the latency of a message of c that starts with p and
// arrived at now, or counts it as bad without a stamp.
func (cs *clientSet) observe(c *client, p []byte, now int64) {
	ts, ok := getStamp(p)
	if !ok {
		cs.bad.Add(1)
		return
	}
	lat := max(now-ts, 0)
	cs.hist.record(c.idx, lat)
	if lat > c.maxLat.Load() {
		c.maxLat.Store(lat)
	}
}

// drain waits until the stable clients have received r.Expect messages, or
// until nothing arrived for r.QuietNS, or r.DeadlineNS, and reports.
func (cs *clientSet) drain(ctx context.Context, r request) reply {
	cs.mu.Lock()
	clients := cs.stable
	cs.mu.Unlock()
	sum := func() int64 {
		var n int64
		for _, c := range clients {
			if c != nil {
				n += c.count.Load()
			}
		}
		return n
	}
	start := time.Now()
	deadline := time.Unix(0, r.DeadlineNS)
	quiet := time.Duration(r.QuietNS)
	last, lastChange := int64(-1), start
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		n := sum()
		now := time.Now()
		if n >= r.Expect || ctx.Err() != nil || (r.DeadlineNS != 0 && now.After(deadline)) {
			break
		}
		if n != last {
			last, lastChange = n, now
		} else if now.Sub(lastChange) > quiet {
			break
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
		}
	}
	var frames int64
	for _, c := range clients {
		if c != nil {
			frames += c.frames.Load()
		}
	}
	rep := reply{
		Delivered:      sum(),
		Frames:         frames,
		ChurnDelivered: cs.churnRx.Load(),
		Bad:            cs.bad.Load(),
		ServerClosed:   int(cs.closedE.Load()),
		WaitedNS:       int64(time.Since(start)),
	}
	for _, c := range clients {
		if c == nil {
			continue
		}
		rep.MaxNS = max(rep.MaxNS, c.maxLat.Load())
		rep.LastNS = max(rep.LastNS, c.last.Load())
	}
	// A bucket's middle can lie past the largest value in it.
	q, _ := cs.hist.quantiles(0.50, 0.99)
	rep.P50NS, rep.P99NS = min(q[0], rep.MaxNS), min(q[1], rep.MaxNS)
	return rep
}

// churner connects clients at a rate, each living a random time around a
// mean, and has each one leave and rejoin the topic in between. The connect
// rate is exact (as long as handshakes keep up); with the mean life set to
// slots/rate, about slots churners are connected at any time.
type churner struct {
	stop     chan struct{}
	wg       sync.WaitGroup
	active   atomic.Int64
	seq      atomic.Int64
	connects atomic.Int64
	discon   atomic.Int64
	errs     atomic.Int64
	skipped  atomic.Int64 // connects not made: twice the slots were alive
	firstErr atomic.Pointer[error]
}

func (cs *clientSet) startChurn(ctx context.Context, r request) error {
	if len(r.URLs) == 0 || r.N <= 0 || r.Rate <= 0 {
		return errors.New("churn-start: need urls, slots and a rate")
	}
	cs.mu.Lock()
	if cs.churn != nil {
		cs.mu.Unlock()
		return errors.New("churn-start: already churning")
	}
	if cs.epoch == 0 {
		cs.epoch, cs.bufSize, cs.batch = r.Epoch, max(r.BufSize, 64), r.Batch
	}
	ch := &churner{stop: make(chan struct{})}
	cs.churn = ch
	cs.mu.Unlock()

	// Closed connections linger in TIME_WAIT for a minute, holding their
	// source port: give churners enough source addresses of their own.
	addrs := 1 + int(r.Rate*70)/max(r.PerAddr, 1)
	limit := int64(2 * r.N)
	ch.wg.Add(1)
	go func() {
		defer ch.wg.Done()
		interval := time.Duration(float64(time.Second) / r.Rate)
		next := time.Now()
		t := time.NewTimer(0)
		defer t.Stop()
		for {
			select {
			case <-ch.stop:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
			now := time.Now()
			for ; !next.After(now); next = next.Add(interval) {
				if ch.active.Load() >= limit {
					ch.skipped.Add(1)
					continue
				}
				seq := ch.seq.Add(1)
				ch.active.Add(1)
				ch.wg.Add(1)
				go func() {
					defer ch.wg.Done()
					defer ch.active.Add(-1)
					cs.churnOne(ctx, ch, r, seq, r.AddrBase+int(seq)%addrs)
				}()
			}
			t.Reset(next.Sub(now))
		}
	}()
	return nil
}

// churnOne is one churner: connect (the server joins the topic in
// OnConnect), leave at a third of its life, join at two thirds, close with a
// close handshake. Even ones ask the session to leave and join ("leave",
// "join"), odd ones ask for the cluster-wide Hub.Leave and Hub.Join of their
// user ("hub-leave", "hub-join").
func (cs *clientSet) churnOne(ctx context.Context, ch *churner, r request, seq int64, addr int) {
	leave, join := []byte("leave"), []byte("join")
	if seq%2 == 1 {
		leave, join = []byte("hub-leave"), []byte("hub-join")
	}
	fail := func(err error) {
		ch.errs.Add(1)
		ch.firstErr.CompareAndSwap(nil, &err)
	}
	url := r.URLs[int(seq)%len(r.URLs)] + "?user=" + r.Prefix + strconv.FormatInt(seq, 10) + cs.query()
	conn, err := cs.dial(ctx, addr, url)
	if err != nil {
		select {
		case <-ch.stop: // cut short by the end of the run
		default:
			fail(err)
		}
		return
	}
	ch.connects.Add(1)
	c := &client{idx: int(seq), conn: conn, done: make(chan struct{})}
	cs.readers.Add(1)
	go cs.read(c, true)

	life := time.Duration(float64(r.LifeNS) * (0.5 + rand.Float64()))
	timer := time.NewTimer(life / 3)
live:
	for _, msg := range [][]byte{leave, join, nil} {
		select {
		case <-ch.stop:
			break live
		case <-ctx.Done():
			break live
		case <-c.done:
			break live
		case <-timer.C:
		}
		if msg != nil {
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := conn.Write(wctx, websocket.MessageText, msg)
			cancel()
			if err != nil {
				fail(err)
				break live
			}
		}
		timer.Reset(life / 3)
	}
	timer.Stop()
	c.closing.Store(true)
	_ = conn.Close(websocket.StatusNormalClosure, "churn")
	<-c.done
	ch.discon.Add(1)
}

func (cs *clientSet) stopChurn() reply {
	cs.mu.Lock()
	ch := cs.churn
	cs.churn = nil
	cs.mu.Unlock()
	if ch == nil {
		return reply{Err: "churn-stop: not churning"}
	}
	close(ch.stop)
	ch.wg.Wait()
	rep := reply{Connects: ch.connects.Load(), Disconnects: ch.discon.Load(), Errors: ch.errs.Load(), Skipped: ch.skipped.Load()}
	if p := ch.firstErr.Load(); p != nil {
		rep.FirstError = (*p).Error()
	}
	return rep
}

// closeAll closes every connection at once (no close handshake: the server
// sees the end of the stream) and waits for every reader.
func (cs *clientSet) closeAll() {
	cs.mu.Lock()
	ch := cs.churn
	cs.mu.Unlock()
	if ch != nil {
		cs.stopChurn()
	}
	cs.mu.Lock()
	clients := cs.stable
	cs.mu.Unlock()
	for _, c := range clients {
		if c != nil {
			c.closing.Store(true)
			_ = c.conn.CloseNow()
		}
	}
	cs.readers.Wait()
	cs.mu.Lock()
	for _, hc := range cs.http {
		hc.CloseIdleConnections()
	}
	cs.mu.Unlock()
}
