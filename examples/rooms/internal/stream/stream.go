// Package stream is the rooms example's binary stream: the frames the
// streamer generates, the length-prefixed framing it sends them in over TCP,
// and the Streamer that sends them to an ingest port.
//
// The ingest protocol is a TCP connection carrying records of a 4-byte
// big-endian length n and n bytes. The first record names the room (UTF-8);
// every later one is a frame, broadcast to the room as it is, byte for byte.
//
// A frame is a 4-byte big-endian sequence number, a 2-byte width, a 2-byte
// height and width × height bytes of palette indices, row by row: a moving
// plasma with a bouncing square. It is a function of its sequence number
// alone, so a test can make any frame again.
package stream

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"math"
	"net"
	"time"
)

// HeaderLen is the size of a frame's header.
const HeaderLen = 8

// Default frame size and rate.
const (
	DefaultWidth  = 80
	DefaultHeight = 60
	DefaultFPS    = 20
)

// MaxRecord is the largest record an ingest port should accept: a frame of
// up to 128 × 96 pixels.
const MaxRecord = HeaderLen + 128*96

// Generate returns frame seq of a w × h stream.
func Generate(seq uint32, w, h int) []byte {
	b := make([]byte, HeaderLen+w*h)
	binary.BigEndian.PutUint32(b[0:4], seq)
	binary.BigEndian.PutUint16(b[4:6], uint16(w))
	binary.BigEndian.PutUint16(b[6:8], uint16(h))
	t := float64(seq) * 0.12
	// A square of side h/4 bouncing off the edges.
	side := h / 4
	bx := bounce(int(seq)*2, w-side)
	by := bounce(int(seq)*3/2, h-side)
	px := b[HeaderLen:]
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			var v byte
			if x >= bx && x < bx+side && y >= by && y < by+side {
				v = 255
			} else {
				f := math.Sin(float64(x)*0.16+t) + math.Sin(float64(y)*0.21-t*1.3) + math.Sin(float64(x+y)*0.09+t*0.7)
				v = byte((f + 3) / 6 * 254) // 0..254; 255 is the square
			}
			px[y*w+x] = v
		}
	}
	return b
}

// bounce maps step to 0..span and back, over and over.
func bounce(step, span int) int {
	if span <= 0 {
		return 0
	}
	p := step % (2 * span)
	if p > span {
		p = 2*span - p
	}
	return p
}

// Seq returns a frame's sequence number, or false when b is too short to
// be a frame.
func Seq(b []byte) (uint32, bool) {
	if len(b) < HeaderLen {
		return 0, false
	}
	return binary.BigEndian.Uint32(b), true
}

// Checksum is the page's checksum of a frame: FNV-1a, 32 bits, of all its
// bytes.
func Checksum(b []byte) uint32 {
	h := fnv.New32a()
	_, _ = h.Write(b)
	return h.Sum32()
}

// WriteRecord writes one record: b's length, then b.
func WriteRecord(w io.Writer, b []byte) error {
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(b)))
	// One write, so a record is never split by a failure in between.
	_, err := w.Write(append(n[:], b...))
	return err
}

// ErrTooLarge is a record longer than the reader accepts.
var ErrTooLarge = errors.New("stream: record too large")

// ReadRecord reads one record of at most max bytes.
func ReadRecord(r io.Reader, max int) ([]byte, error) {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint32(n[:])
	if size > uint32(max) {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrTooLarge, size, max)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}

// Streamer sends frames to an ingest port. When the connection fails it
// dials the next address of Addrs (round robin, with a short backoff) and
// carries on with the next sequence number: a viewer sees the frames lost
// meanwhile as a gap.
type Streamer struct {
	Addrs  []string // ingest addresses, tried in order; at least one
	Room   string   // room to stream into
	FPS    int      // frames a second; default DefaultFPS
	Width  int      // default DefaultWidth
	Height int      // default DefaultHeight
	Frames int      // stop after this many frames; 0 streams until ctx ends
	// OnSend, when set, is called with each frame's sequence number and
	// checksum just before it is written.
	OnSend func(seq, sum uint32)
	Logger *slog.Logger // default slog.Default()
}

// writeTimeout bounds one write: a frozen link fails over.
const writeTimeout = 2 * time.Second

// Run streams until ctx ends (returning nil) or Frames frames were sent.
func (s *Streamer) Run(ctx context.Context) error {
	if len(s.Addrs) == 0 {
		return errors.New("stream: no ingest address")
	}
	fps, w, h := s.FPS, s.Width, s.Height
	if fps <= 0 {
		fps = DefaultFPS
	}
	if w <= 0 {
		w = DefaultWidth
	}
	if h <= 0 {
		h = DefaultHeight
	}
	if HeaderLen+w*h > MaxRecord {
		return fmt.Errorf("stream: %d × %d frames exceed %d bytes", w, h, MaxRecord)
	}
	log := s.Logger
	if log == nil {
		log = slog.Default()
	}
	tick := time.NewTicker(time.Second / time.Duration(fps))
	defer tick.Stop()
	var (
		conn    net.Conn
		seq     uint32
		next    int
		backoff = 100 * time.Millisecond
	)
	defer func() {
		if conn != nil {
			_ = conn.Close()
		}
	}()
	for s.Frames == 0 || int(seq) < s.Frames {
		if conn == nil {
			addr := s.Addrs[next%len(s.Addrs)]
			next++
			var d net.Dialer
			dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			c, err := d.DialContext(dctx, "tcp", addr)
			cancel()
			if err == nil {
				_ = c.SetWriteDeadline(time.Now().Add(writeTimeout))
				err = WriteRecord(c, []byte(s.Room))
				if err != nil {
					_ = c.Close()
				}
			}
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				log.Warn("streamer: ingest unreachable", "addr", addr, "err", err)
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, 2*time.Second)
				continue
			}
			log.Info("streamer: streaming", "addr", addr, "room", s.Room, "from", seq)
			conn, backoff = c, 100*time.Millisecond
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		f := Generate(seq, w, h)
		if s.OnSend != nil {
			s.OnSend(seq, Checksum(f))
		}
		seq++
		_ = conn.SetWriteDeadline(time.Now().Add(writeTimeout))
		if err := WriteRecord(conn, f); err != nil {
			log.Warn("streamer: ingest lost", "addr", conn.RemoteAddr().String(), "err", err)
			_ = conn.Close()
			conn = nil
		}
	}
	return nil
}
