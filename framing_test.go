package wshub

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// framingWS is a WebSocket client written by hand over TCP, which does its own
// handshake and parses every frame the server sends, so that a frame split
// around another, or malformed, shows.
type framingWS struct {
	t   *testing.T
	nc  net.Conn
	br  *bufio.Reader
	wmu sync.Mutex
}

// dialFraming opens a WebSocket to srvURL (http://...) with query, by hand.
func dialFraming(t *testing.T, srvURL, query string) *framingWS {
	t.Helper()
	u, err := url.Parse(srvURL)
	require.NoError(t, err)
	nc, err := net.Dial("tcp", u.Host)
	require.NoError(t, err)
	t.Cleanup(func() { nc.Close() })
	var k [16]byte
	_, _ = rand.Read(k[:])
	key := base64.StdEncoding.EncodeToString(k[:])
	_, err = fmt.Fprintf(nc, "GET /?%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n", query, u.Host, key)
	require.NoError(t, err)
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	require.Equal(t, base64.StdEncoding.EncodeToString(sum[:]), resp.Header.Get("Sec-WebSocket-Accept"))
	return &framingWS{t: t, nc: nc, br: br}
}

type wsFrame struct {
	op      byte
	payload []byte
}

// readFrame reads one frame and checks that it is well formed as a
// server's: final (nothing the hub sends is fragmented), no reserved bits,
// unmasked, a known opcode, and a control frame's payload within 125 bytes.
func (c *framingWS) readFrame() (wsFrame, error) {
	var h [2]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return wsFrame{}, err
	}
	op := h[0] & 0x0f
	if h[0]&0xf0 != 0x80 {
		return wsFrame{}, fmt.Errorf("frame byte 0 %#x: want FIN and no reserved bits", h[0])
	}
	if h[1]&0x80 != 0 {
		return wsFrame{}, errors.New("a masked frame from the server")
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(c.br, b[:]); err != nil {
			return wsFrame{}, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
		if n < 126 {
			return wsFrame{}, fmt.Errorf("length %d in the 16-bit form", n)
		}
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(c.br, b[:]); err != nil {
			return wsFrame{}, err
		}
		n = binary.BigEndian.Uint64(b[:])
		if n <= 0xffff || n > 16<<20 {
			return wsFrame{}, fmt.Errorf("length %d in the 64-bit form", n)
		}
	}
	switch op {
	case 0x1, 0x2:
	case 0x8, 0x9, 0xa:
		if n > 125 {
			return wsFrame{}, fmt.Errorf("control frame %#x of %d bytes", op, n)
		}
	default:
		return wsFrame{}, fmt.Errorf("opcode %#x", op)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(c.br, p); err != nil {
		return wsFrame{}, fmt.Errorf("payload of %d bytes cut short: %w", n, err)
	}
	return wsFrame{op: op, payload: p}, nil
}

// writeFrame writes one masked frame, as a client must.
func (c *framingWS) writeFrame(op byte, payload []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	b := []byte{0x80 | op}
	switch n := len(payload); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n <= 0xffff:
		b = binary.BigEndian.AppendUint16(append(b, 0x80|126), uint16(n))
	default:
		b = binary.BigEndian.AppendUint64(append(b, 0x80|127), uint64(n))
	}
	var key [4]byte
	_, _ = rand.Read(key[:])
	b = append(b, key[:]...)
	for i, x := range payload {
		b = append(b, x^key[i%4])
	}
	_, err := c.nc.Write(b)
	return err
}

// framingSizes are the payload sizes the test cycles through: around each
// boundary of the length forms, over writeChunk and over corkLimit.
var framingSizes = []int{9, 125, 126, 127, 1000, 0xffff, 0x10000, writeChunk + 3, corkLimit + 5, 300 << 10}

// framingPayload is message seq of a stream ('B' broadcast, 'S' Send):
// the stream's letter, seq, and its size's worth of a byte of seq.
func framingPayload(stream byte, seq int) []byte {
	n := framingSizes[seq%len(framingSizes)]
	p := bytes.Repeat([]byte{byte(seq)}, n)
	p[0] = stream
	binary.BigEndian.PutUint32(p[1:], uint32(seq))
	return p
}

// framingReader checks what one raw client receives: every frame well
// formed, each stream's messages whole and in order with none missing,
// every pong answering the client's pings in order, the server's pings
// answered, and nothing after the close frame.
type framingReader struct {
	c         *framingWS
	positions bool
	next      map[byte]int
	pings     chan []byte // sent, awaiting their pong
	pongs     chan struct{}
	got       chan struct{} // a data message arrived
	closeCode chan uint16
	err       error
	done      chan struct{}
}

func newFramingReader(c *framingWS, positions bool) *framingReader {
	r := &framingReader{c: c, positions: positions, next: map[byte]int{}, pings: make(chan []byte, 1000),
		pongs: make(chan struct{}, 1000), got: make(chan struct{}, 1<<16), closeCode: make(chan uint16, 1), done: make(chan struct{})}
	go r.run()
	return r
}

func (r *framingReader) run() {
	defer close(r.done)
	r.err = r.loop()
}

func (r *framingReader) loop() error {
	for {
		f, err := r.c.readFrame()
		if err != nil {
			return err
		}
		switch f.op {
		case 0x1, 0x2:
			if err := r.data(f); err != nil {
				return err
			}
			r.got <- struct{}{}
		case 0x9:
			if err := r.c.writeFrame(0xa, f.payload); err != nil {
				return err
			}
		case 0xa:
			select {
			case want := <-r.pings:
				if !bytes.Equal(want, f.payload) {
					return fmt.Errorf("pong %q, want %q", f.payload, want)
				}
				r.pongs <- struct{}{}
			default:
				return fmt.Errorf("unsolicited pong %q", f.payload)
			}
		case 0x8:
			if len(f.payload) < 2 {
				return errors.New("close frame without a status")
			}
			r.closeCode <- binary.BigEndian.Uint16(f.payload)
			_ = r.c.writeFrame(0x8, f.payload[:2])
			// Nothing may follow the close frame.
			if f, err := r.c.readFrame(); err == nil {
				return fmt.Errorf("a frame (opcode %#x, %d bytes) after the close frame", f.op, len(f.payload))
			}
			return nil
		}
	}
}

func (r *framingReader) data(f wsFrame) error {
	p := f.payload
	if r.positions {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			return errors.New("no positions head")
		}
		p = p[i+1:]
	}
	if len(p) < 5 {
		return fmt.Errorf("message of %d bytes", len(p))
	}
	stream, seq := p[0], int(binary.BigEndian.Uint32(p[1:]))
	if seq != r.next[stream] {
		return fmt.Errorf("stream %c: message %d, want %d", stream, seq, r.next[stream])
	}
	if want := framingPayload(stream, seq); !bytes.Equal(want, p) {
		return fmt.Errorf("stream %c: message %d of %d bytes garbled (want %d)", stream, seq, len(p), len(want))
	}
	r.next[stream]++
	return nil
}

// ping sends a ping and waits for its pong.
func (r *framingReader) ping(t *testing.T, i int) {
	p := []byte(fmt.Sprintf("ping %d", i))
	r.pings <- p
	require.NoError(t, r.c.writeFrame(0x9, p))
	select {
	case <-r.pongs:
	case <-r.done:
		require.FailNow(t, "reader ended", "%v", r.err)
	case <-time.After(waitFor):
		require.FailNow(t, "no pong")
	}
}

// The hub writes its data frames below the websocket library. Checked here
// byte by byte with hand-written clients: under broadcasts and Sends of every
// size, written straight by the fan-out or by the writer, often only partly
// taken by the socket, with client pings, server pings and both kinds of
// close going on, every frame on the wire is whole and well formed and every
// message arrives, in order.
func TestFramingByteExact(t *testing.T) {
	for _, tc := range []struct {
		name    string
		query   string
		through bool // the fan-out writes to every idle socket
	}{{"plain", "", false}, {"positions", PositionsParam + "=1", false}, {"plain-through", "", true}, {"positions-through", PositionsParam + "=1", true}} {
		t.Run(tc.name, func(t *testing.T) {
			sessions := &sessionLog{m: map[string][]*Session{}}
			c := newCluster(t, 1, func(_ int, o *Options) {
				o.OnConnect = func(ctx context.Context, s *Session) error {
					_ = sessions.hook(ctx, s)
					return s.Join(ctx, "room")
				}
				o.MaxMessageSize = 1 << 20
				o.SendQueueLen, o.SendQueueBytes = 1<<16, 256<<20 // nothing dropped
				o.SocketWriteBuffer = 16 << 10                    // large frames are taken in part
				o.PingInterval = 5 * time.Millisecond
				o.WriteTimeout = waitFor
			})
			n := c.nodes[0]
			if tc.through {
				n.hub.throughIdle = 0
			}
			const clients, msgs = 3, 150
			readers := make([]*framingReader, clients)
			for i := range readers {
				rc := dialFraming(t, n.srv.URL, "user=u"+fmt.Sprint(i)+"&"+tc.query)
				readers[i] = newFramingReader(rc, tc.query != "")
			}
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			var wg sync.WaitGroup
			wg.Add(2 + clients)
			go func() { // broadcasts: one frame for all
				defer wg.Done()
				for i := 0; i < msgs; i++ {
					assert.NoError(t, n.hub.Broadcast(ctx, "room", Message{Type: MessageBinary, Data: framingPayload('B', i)}))
				}
			}()
			go func() { // Sends: a frame per session
				defer wg.Done()
				for i := 0; i < msgs; i++ {
					for u := 0; u < clients; u++ {
						assert.NoError(t, sessions.get(t, "u"+fmt.Sprint(u), 0).Send(Message{Type: MessageBinary, Data: framingPayload('S', i)}))
					}
				}
			}()
			for _, r := range readers {
				go func() { // client pings, each answered in order
					defer wg.Done()
					for i := 0; i < 100; i++ {
						r.ping(t, i)
					}
				}()
			}
			wg.Wait()
			for _, r := range readers {
				for i := 0; i < 2*msgs; i++ {
					select {
					case <-r.got:
					case <-r.done:
						require.FailNow(t, "reader ended", "%v", r.err)
					case <-time.After(waitFor):
						require.FailNow(t, "messages missing", "%v", r.next)
					}
				}
			}

			// Both closes, with large broadcasts in flight: the
			// client's (the library answers it) and the server's.
			go func() {
				for i := msgs; i < msgs+20; i++ {
					if n.hub.Broadcast(ctx, "room", Message{Type: MessageBinary, Data: framingPayload('B', i)}) != nil {
						return
					}
				}
			}()
			require.NoError(t, readers[0].c.writeFrame(0x8, []byte{0x03, 0xe8}))
			require.NoError(t, sessions.get(t, "u1", 0).Close(StatusGoingAway, "bye"))
			for i, r := range readers[:2] {
				select {
				case <-r.done:
				case <-time.After(waitFor):
					require.FailNow(t, "no close", "client %d", i)
				}
				require.NoError(t, r.err, "client %d", i)
				select {
				case code := <-r.closeCode:
					if i == 1 {
						assert.EqualValues(t, StatusGoingAway, code)
					}
				default:
					assert.Fail(t, "no close frame", "client %d", i)
				}
			}
			assert.Zero(t, n.hub.Stats().Dropped)
			readers[2].c.nc.Close()
			<-readers[2].done
		})
	}
}
