package wshub

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// WebSocket opcodes, for the raw client.
const (
	wsOpContinuation = 0x0
	wsOpText         = 0x1
	wsOpBinary       = 0x2
	wsOpClose        = 0x8
	wsOpPing         = 0x9
	wsOpPong         = 0xa
)

// clientFrame is a masked client frame with the given opcode and payload.
func clientFrame(fin bool, op byte, payload []byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	b := []byte{b0}
	switch n := len(payload); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n <= math.MaxUint16:
		b = append(b, 0x80|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	key := [4]byte{0x37, 0xfa, 0x21, 0x3d}
	b = append(b, key[:]...)
	for i, c := range payload {
		b = append(b, c^key[i%4])
	}
	return b
}

// repeatFrame is n copies of a frame.
func repeatFrame(n int, fin bool, op byte, payload []byte) []byte {
	return bytes.Repeat(clientFrame(fin, op, payload), n)
}

// rawClient speaks WebSocket over a bare TCP connection and writes frames
// made by hand: the floods a WebSocket library would not send. Every
// operation on it is bounded by one deadline.
type rawClient struct {
	t    testing.TB
	conn net.Conn
	br   *bufio.Reader
}

// dialRaw opens a raw WebSocket to the server at addr as user, writing early
// right behind the handshake request, before its answer arrives.
func dialRaw(t testing.TB, addr, user string, early []byte, deadline time.Duration) *rawClient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, waitFor)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	require.NoError(t, conn.SetDeadline(time.Now().Add(deadline)))
	req := "GET /ws?user=" + user + " HTTP/1.1\r\nHost: " + addr + "\r\n" +
		"Upgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	_, err = conn.Write(append([]byte(req), early...))
	require.NoError(t, err)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
	return &rawClient{t: t, conn: conn, br: br}
}

// readFrame reads one (unmasked) server frame.
func (c *rawClient) readFrame() (op byte, payload []byte, err error) {
	var h [2]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var e [2]byte
		if _, err := io.ReadFull(c.br, e[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(e[:]))
	case 127:
		var e [8]byte
		if _, err := io.ReadFull(c.br, e[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(e[:])
	}
	if n > 1<<20 {
		return 0, nil, fmt.Errorf("server frame of %d bytes", n)
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(c.br, payload); err != nil {
		return 0, nil, err
	}
	return h[0] & 0x0f, payload, nil
}

// closeStatus reads up to the server's close frame, skipping the rest,
// answers it, and returns its status and reason.
func (c *rawClient) closeStatus() (StatusCode, string) {
	c.t.Helper()
	for {
		op, p, err := c.readFrame()
		require.NoError(c.t, err, "the server sent no close frame")
		if op != wsOpClose {
			continue
		}
		if len(p) < 2 {
			return -1, ""
		}
		_, _ = c.conn.Write(clientFrame(true, wsOpClose, p[:2]))
		return StatusCode(binary.BigEndian.Uint16(p)), string(p[2:])
	}
}

// rateHub is a one-node cluster with the given limits whose OnMessage counts
// what each user's sessions send and echoes it, and which reports the
// flooder's end.
type rateHub struct {
	*node
	mu       sync.Mutex
	got      map[string]int
	msgs     map[string][]string
	flooderD chan error // OnDisconnect of user "flooder"
}

func newRateHub(t *testing.T, limits Limits, tweak func(o *Options)) *rateHub {
	t.Helper()
	r := &rateHub{got: make(map[string]int), msgs: make(map[string][]string), flooderD: make(chan error, 1)}
	c := newCluster(t, 1, func(_ int, o *Options) {
		o.Limits = limits
		o.OnMessage = func(_ context.Context, s *Session, m Message) {
			r.mu.Lock()
			r.got[s.UserID()]++
			if len(r.msgs[s.UserID()]) < 100 {
				r.msgs[s.UserID()] = append(r.msgs[s.UserID()], string(m.Data))
			}
			r.mu.Unlock()
			if s.UserID() != "flooder" {
				_ = s.Send(m)
			}
		}
		o.OnDisconnect = func(s *Session, err error) {
			if s.UserID() == "flooder" {
				r.flooderD <- err
			}
		}
		if tweak != nil {
			tweak(o)
		}
	})
	r.node = c.nodes[0]
	return r
}

// received returns how many messages OnMessage saw from user.
func (r *rateHub) received(user string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.got[user]
}

// messages returns the first messages OnMessage saw from user.
func (r *rateHub) messages(user string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.msgs[user]...)
}

// addr is the node's listening address.
func (r *rateHub) addr() string { return r.srv.Listener.Addr().String() }

// disconnected returns the error OnDisconnect gave the flooder's session.
func (r *rateHub) disconnected(t *testing.T) error {
	t.Helper()
	select {
	case err := <-r.flooderD:
		return err
	case <-time.After(waitFor):
		t.Fatal("the flooder's session did not end")
	}
	return nil
}

// Floods of one client, each bounded, that the rate limits must bound:
// frames the websocket library handles on its own (pings, empty
// continuations of a message never finished) as much as messages.
const floodFrames = 2000

var floods = []struct {
	name   string
	frames func() []byte
}{
	{"ping", func() []byte { return repeatFrame(floodFrames, true, wsOpPing, nil) }},
	{"empty continuation", func() []byte {
		return append(clientFrame(false, wsOpText, []byte("a")), repeatFrame(floodFrames, false, wsOpContinuation, nil)...)
	}},
	{"message", func() []byte { return repeatFrame(floodFrames, true, wsOpText, []byte("m")) }},
}

// floodLimits are far below the floods, and far above what the well-behaved
// client of these tests sends.
func floodLimits(p RatePolicy) Limits {
	return Limits{FramesPerSecond: 20, FrameBurst: 20, RatePolicy: p}
}

// TestRateDelayHoldsBackAFlood floods the hub with each kind of frame under
// RateDelay: the flooder must be made to wait (counted in RateDelayed)
// without being closed, and another client must be served meanwhile.
func TestRateDelayHoldsBackAFlood(t *testing.T) {
	for _, f := range floods {
		t.Run(f.name, func(t *testing.T) {
			h := newRateHub(t, floodLimits(RateDelay), nil)
			flooder := dialRaw(t, h.addr(), "flooder", nil, waitFor)
			_, err := flooder.conn.Write(f.frames())
			require.NoError(t, err)

			require.Eventually(t, func() bool { return h.hub.Stats().RateDelayed > 0 }, waitFor, time.Millisecond,
				"the flooder was never delayed")
			good := dial(t, h.node, "good")
			require.NoError(t, good.conn.Write(bg, websocket.MessageText, []byte("hello")))
			assert.Equal(t, "hello", good.nextText(), "a client beside the flooder is served")

			st := h.hub.Stats()
			assert.Zero(t, st.RateClosed)
			assert.Len(t, h.sessions("flooder"), 1, "RateDelay keeps the flooder's session")
			assert.Less(t, h.received("flooder"), floodFrames, "the flood is held back")
		})
	}
}

// TestRateCloseEndsAFlood floods the hub with each kind of frame under
// RateClose: the flooder must be closed with 1008 and counted, and what it
// sent past its limits must not reach OnMessage.
func TestRateCloseEndsAFlood(t *testing.T) {
	for _, f := range floods {
		t.Run(f.name, func(t *testing.T) {
			h := newRateHub(t, floodLimits(RateClose), nil)
			flooder := dialRaw(t, h.addr(), "flooder", nil, waitFor)
			_, err := flooder.conn.Write(f.frames())
			require.NoError(t, err)

			code, reason := flooder.closeStatus()
			assert.Equal(t, StatusPolicyViolation, code)
			assert.Equal(t, "rate limit exceeded", reason)
			err = h.disconnected(t)
			assert.ErrorIs(t, err, ErrRateLimit)
			st := h.hub.Stats()
			assert.EqualValues(t, 1, st.RateClosed)
			assert.Zero(t, st.RateDelayed)
			assert.Less(t, h.received("flooder"), floodFrames, "the flood reached OnMessage")
		})
	}
}

// TestFramesSentWithTheHandshakeAreLimitedAndKept sends frames in the same
// write as the upgrade request, so that the HTTP server has them buffered
// when the connection is hijacked: they must be charged like any others,
// and none may be lost.
func TestFramesSentWithTheHandshakeAreLimitedAndKept(t *testing.T) {
	t.Run("limited", func(t *testing.T) {
		h := newRateHub(t, Limits{FramesPerSecond: 1, FrameBurst: 3, RatePolicy: RateClose}, nil)
		flooder := dialRaw(t, h.addr(), "flooder", repeatFrame(5, true, wsOpPing, nil), waitFor)
		code, _ := flooder.closeStatus()
		assert.Equal(t, StatusPolicyViolation, code)
		// Counted once the session has ended, which the client's close
		// status may precede.
		assert.ErrorIs(t, h.disconnected(t), ErrRateLimit)
		assert.EqualValues(t, 1, h.hub.Stats().RateClosed)
	})
	t.Run("kept", func(t *testing.T) {
		h := newRateHub(t, Limits{}, nil)
		early := append(clientFrame(true, wsOpText, []byte("early")), clientFrame(true, wsOpPing, []byte("p"))...)
		early = append(early, clientFrame(false, wsOpText, []byte("frag"))...)
		early = append(early, clientFrame(true, wsOpContinuation, []byte("mented"))...)
		c := dialRaw(t, h.addr(), "early", early, waitFor)
		_, err := c.conn.Write(clientFrame(true, wsOpText, []byte("late")))
		require.NoError(t, err)
		require.Eventually(t, func() bool { return h.received("early") == 3 }, waitFor, time.Millisecond)
		assert.Equal(t, []string{"early", "fragmented", "late"}, h.messages("early"))
		assert.Zero(t, h.hub.Stats().RateDelayed)
	})
}

// TestNormalClientIsNeverLimited runs, with the default limits, a client that
// sends 60 messages a second, pings now and then and answers the hub's
// pings: it must never be delayed nor closed.
func TestNormalClientIsNeverLimited(t *testing.T) {
	const messages = 120 // two seconds' worth
	h := newRateHub(t, Limits{}, func(o *Options) { o.PingInterval = 50 * time.Millisecond })
	c := dial(t, h.node, "player")
	msg := []byte(strings.Repeat("x", 200))
	tick := time.NewTicker(time.Second / 60)
	defer tick.Stop()
	for i := 0; i < messages; i++ {
		<-tick.C
		require.NoError(t, c.conn.Write(bg, websocket.MessageText, msg))
		if i%10 == 0 {
			ctx, cancel := context.WithTimeout(bg, waitFor)
			require.NoError(t, c.conn.Ping(ctx))
			cancel()
		}
	}
	require.Eventually(t, func() bool { return h.received("player") == messages }, waitFor, time.Millisecond)
	st := h.hub.Stats()
	assert.Zero(t, st.RateDelayed)
	assert.Zero(t, st.RateClosed)
	assert.Len(t, h.sessions("player"), 1)
}

// TestInvalidTextCloses1007 sends a text message that is not UTF-8: the
// session must be closed with 1007 and counted, and OnMessage must not see
// it. A character split between two frames is valid.
func TestInvalidTextCloses1007(t *testing.T) {
	h := newRateHub(t, Limits{}, nil)
	c := dialNoRead(t, h.node, "flooder")
	w, err := c.conn.Writer(bg, websocket.MessageText)
	require.NoError(t, err)
	_, err = w.Write([]byte("5 \xe2\x82"))
	require.NoError(t, err)
	_, err = w.Write([]byte("\xac"))
	require.NoError(t, err)
	require.NoError(t, w.Close())
	require.NoError(t, c.conn.Write(bg, websocket.MessageText, []byte("bad \xff")))
	require.NoError(t, c.conn.Write(bg, websocket.MessageText, []byte("after")))
	c.startReading()

	assert.Equal(t, StatusInvalidFramePayloadData, c.closed())
	assert.ErrorIs(t, h.disconnected(t), ErrInvalidText)
	assert.Equal(t, []string{"5 €"}, h.messages("flooder"))
	assert.EqualValues(t, 1, h.hub.Stats().InvalidText)
}

// TestFrameScannerFollowsEveryLength scans frames of each length encoding,
// masked or not, fed whole and a byte at a time.
func TestFrameScannerFollowsEveryLength(t *testing.T) {
	var stream []byte
	var frames int
	for _, n := range []int{0, 1, 125, 126, 127, 1000, 65535, 65536, 70000} {
		stream = append(stream, clientFrame(n%2 == 0, wsOpBinary, make([]byte, n))...)
		frames++
	}
	stream = append(stream, 0x89, 0x00) // an unmasked ping
	stream = append(stream, 0x81, 0x7e, 0x00, 0x03, 'a', 'b', 'c')
	frames += 2
	var whole frameScanner
	assert.Equal(t, frames, whole.scan(stream))
	assert.Zero(t, whole.pos, "the stream ends between frames")
	assert.Zero(t, whole.left, "the stream ends between frames")
	var bytewise frameScanner
	got := 0
	for i := range stream {
		got += bytewise.scan(stream[i : i+1])
	}
	assert.Equal(t, frames, got)
}

// TestReadGuardAllocatesNothingPerRead reads many small frames through a
// limiting guard.
func TestReadGuardAllocatesNothingPerRead(t *testing.T) {
	stream := repeatFrame(1000, true, wsOpText, []byte("m"))
	src := bytes.NewReader(stream)
	g := newReadGuard(bg, Limits{FramesPerSecond: 1e12, FrameBurst: 1 << 30, BytesPerSecond: 1e12, ByteBurst: 1 << 30}, func() {}, func() {})
	g.conn = src
	buf := make([]byte, 4096)
	allocs := testing.AllocsPerRun(100, func() {
		src.Reset(stream)
		for {
			if _, err := g.Read(buf); err != nil {
				break
			}
		}
	})
	assert.Zero(t, allocs)
}

// chunkReader returns data in reads of the sizes sizes gives, in turn.
type chunkReader struct {
	data, sizes []byte
	i           int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := len(p)
	if len(r.sizes) > 0 {
		n = min(n, int(r.sizes[r.i%len(r.sizes)])+1)
		r.i++
	}
	n = copy(p, r.data[:min(n, len(r.data))])
	r.data = r.data[n:]
	return n, nil
}

// refFrames counts the frames that begin in a stream, the obvious way.
func refFrames(b []byte) int {
	frames := 0
	for len(b) > 0 {
		frames++
		if len(b) < 2 {
			break
		}
		ext, size := 0, 2
		plen := uint64(b[1] & 0x7f)
		switch plen {
		case 126:
			ext = 2
		case 127:
			ext = 8
		}
		size += ext
		if b[1]&0x80 != 0 {
			size += 4
		}
		if len(b) < size {
			break
		}
		if ext > 0 {
			plen = 0
			for _, c := range b[2 : 2+ext] {
				plen = plen<<8 | uint64(c)
			}
		}
		b = b[size:]
		if plen >= uint64(len(b)) {
			break
		}
		b = b[plen:]
	}
	return frames
}

// FuzzReadGuard reads random bytes through a guard, in reads of random sizes
// and with a random part of them buffered before the hijack: every byte must
// come out once and in order, and the guard must count the frames that a
// plain parse of the whole stream finds, whatever the reads.
func FuzzReadGuard(f *testing.F) {
	f.Add(repeatFrame(3, true, wsOpPing, nil), []byte{0, 5, 1}, uint16(4))
	f.Add(clientFrame(true, wsOpBinary, make([]byte, 300)), []byte{200}, uint16(0))
	f.Add(append(clientFrame(false, wsOpText, []byte("a")), repeatFrame(10, false, wsOpContinuation, nil)...), []byte{}, uint16(7))
	f.Add([]byte{0x82, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4, 5}, []byte{1}, uint16(2))
	f.Fuzz(func(t *testing.T, data, sizes []byte, pre uint16) {
		l := Limits{FramesPerSecond: math.Inf(1), FrameBurst: 1, BytesPerSecond: math.Inf(1), ByteBurst: 1 << 20}
		g := newReadGuard(bg, l, func() {}, func() {})
		k := min(int(pre)%4096, len(data)) // what fits the server's reader
		br := bufio.NewReader(bytes.NewReader(data[:k]))
		if k > 0 {
			_, _ = br.Peek(k) // what the server had buffered
		}
		g.attach(br, &chunkReader{data: data[k:], sizes: sizes})
		var out []byte
		buf := make([]byte, 512)
		for i := 0; ; i++ {
			n := len(buf)
			if len(sizes) > 0 {
				n = int(sizes[(i+1)%len(sizes)])%len(buf) + 1
			}
			m, err := br.Read(buf[:n])
			out = append(out, buf[:m]...)
			if err != nil {
				break
			}
		}
		require.Equal(t, data, out)
		var whole frameScanner
		require.Equal(t, refFrames(data), whole.scan(data))
		require.Equal(t, whole, g.scan, "scanning in pieces ends where scanning at once does")
	})
}

// The ping flood measured by TestPingFloodCPU, and the child process that
// sends it.
const (
	cpuFloodEnv    = "WSHUB_FLOOD_CPU"  // "off" (limits off) or "default"
	cpuFloodClient = "WSHUB_FLOOD_ADDR" // set in the flooding child
	cpuFloodFrames = 2_000_000
	cpuFloodFor    = 5 * time.Second
)

// TestPingFloodCPU measures the CPU the hub spends on one client's ping flood
// of at most cpuFloodFrames pings over at most cpuFloodFor. The flood comes
// from a child process, so the process's rusage is the hub's alone. It runs
// only when asked:
//
//	WSHUB_FLOOD_CPU=off go test -run 'TestPingFloodCPU$' -v .
//	WSHUB_FLOOD_CPU=default go test -run 'TestPingFloodCPU$' -v .
func TestPingFloodCPU(t *testing.T) {
	mode := os.Getenv(cpuFloodEnv)
	if mode == "" {
		t.Skip("a measurement: set " + cpuFloodEnv + "=off or =default")
	}
	var l Limits
	if mode == "off" {
		l = Limits{FramesPerSecond: -1, BytesPerSecond: -1}
	}
	h, err := New(&Options{Logger: quiet, Limits: l})
	require.NoError(t, err)
	srv := httptest.NewServer(h)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(bg, waitFor)
		defer cancel()
		require.NoError(t, h.Close(ctx))
		srv.Close()
	})

	ctx, cancel := context.WithTimeout(bg, cpuFloodFor+waitFor)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestPingFloodClient$", "-test.v")
	cmd.Env = append(os.Environ(), cpuFloodClient+"="+srv.Listener.Addr().String(), cpuFloodEnv+"=")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	before := cpuTime(t)
	start := time.Now()
	err = cmd.Run()
	wall := time.Since(start)
	cpu := cpuTime(t) - before
	require.NoError(t, err, out.String())
	var sent, pongs int
	var secs float64
	for _, line := range strings.Split(out.String(), "\n") {
		if _, err := fmt.Sscanf(strings.TrimSpace(line), "flood: sent %d pongs %d seconds %g", &sent, &pongs, &secs); err == nil {
			break
		}
	}
	require.Positive(t, secs, out.String())
	st := h.Stats()
	t.Logf("limits %s: %d pings sent in %.2fs, %d pongs (%.0f/s); hub CPU %.2fs over %.2fs of the child's run: %.0f%% of a core; RateDelayed %d",
		mode, sent, secs, pongs, float64(pongs)/secs, cpu.Seconds(), wall.Seconds(), 100*cpu.Seconds()/wall.Seconds(), st.RateDelayed)
}

// cpuTime is the CPU time this process has used, user and system.
func cpuTime(t *testing.T) time.Duration {
	var ru syscall.Rusage
	require.NoError(t, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestPingFloodClient is the child of TestPingFloodCPU: it pings the hub at
// the address in its environment as fast as it can, reading the pongs, for
// at most cpuFloodFrames pings and cpuFloodFor, and prints what it did.
func TestPingFloodClient(t *testing.T) {
	addr := os.Getenv(cpuFloodClient)
	if addr == "" {
		t.Skip("run by TestPingFloodCPU")
	}
	c := dialRaw(t, addr, "flooder", nil, cpuFloodFor+waitFor)
	var pongs atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			op, _, err := c.readFrame()
			if err != nil {
				return
			}
			if op == wsOpPong {
				pongs.Add(1)
			}
		}
	}()
	chunk := repeatFrame(10_000, true, wsOpPing, nil)
	end := time.Now().Add(cpuFloodFor)
	require.NoError(t, c.conn.SetWriteDeadline(end))
	start, sent := time.Now(), 0
	for sent < cpuFloodFrames {
		if _, err := c.conn.Write(chunk); err != nil {
			var ne net.Error
			require.True(t, errors.As(err, &ne) && ne.Timeout(), "write: %v", err)
			break
		}
		sent += 10_000
	}
	secs := time.Since(start).Seconds()
	_ = c.conn.Close()
	<-done
	fmt.Println("flood: sent " + strconv.Itoa(sent) + " pongs " + strconv.FormatInt(pongs.Load(), 10) + " seconds " + strconv.FormatFloat(secs, 'f', 3, 64))
}

// A client that gets itself closed (here with 1007) and then floods is
// still charged: once its buckets are spent after the close frame nothing
// more is read from it, and the connection ends with the close handshake's
// timeout, instead of the websocket library reading and dropping a
// line-speed flood all that time.
func TestFloodAfterTheCloseIsNotRead(t *testing.T) {
	r := newRateHub(t, floodLimits(RateDelay), nil)
	c := dialRaw(t, r.addr(), "flooder", nil, waitFor)
	_, err := c.conn.Write(clientFrame(true, wsOpText, []byte{0xff, 0xfe}))
	require.NoError(t, err)
	for { // read the close frame, and do not answer it
		op, p, err := c.readFrame()
		require.NoError(t, err)
		if op == wsOpClose {
			require.Equal(t, StatusCode(1007), StatusCode(binary.BigEndian.Uint16(p)))
			break
		}
	}
	start := time.Now()
	_, err = c.conn.Write(repeatFrame(1_000_000, true, wsOpText, []byte("m"))) // 7 MB
	t.Logf("the flood's write ended after %v: %v", time.Since(start), err)
	require.Error(t, err, "the hub read a 7 MB flood after its close frame")
	require.False(t, errors.Is(err, os.ErrDeadlineExceeded), "the socket was closed, not just slow: %v", err)
}
