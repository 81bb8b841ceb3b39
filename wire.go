package wshub

// Data frames are written below the websocket library. A session's data
// messages never go through websocket.Conn.Write: the hub encodes each one
// as a WebSocket frame itself (server frames are unmasked, and compression
// is off), a broadcast's once for all its recipients, and writes it to the
// corked connection, which also carries the library's own frames (pongs,
// pings, close) whole and in order between them. See corkConn.

import (
	"encoding/binary"

	"github.com/coder/websocket"
)

// maxFrameHeader is the longest header of an unmasked frame.
const maxFrameHeader = 10

// Kinds of outMsg beyond websocket.MessageText and MessageBinary, whose
// data is a payload that the writer frames as it writes it.
const (
	// frameMsg: data is a whole WebSocket data frame, header included,
	// built once per broadcast and shared by its recipients.
	frameMsg websocket.MessageType = 0x40 + iota
	// restMsg: no data, but the rest of a frame the fan-out began to
	// write straight to the socket, which the corkConn keeps (see
	// corkConn.writeThrough): it is first in the queue, and the writer
	// finishes that frame.
	restMsg
)

// frameHeaderLen returns the length of the header of an unmasked frame with
// a payload of n bytes.
func frameHeaderLen(n int) int {
	switch {
	case n < 126:
		return 2
	case n <= 0xffff:
		return 4
	default:
		return 10
	}
}

// appendFrameHeader appends the header of a final, unmasked frame of typ
// (text or binary: its opcode is its value) with a payload of n bytes.
func appendFrameHeader(b []byte, typ websocket.MessageType, n int) []byte {
	b = append(b, 0x80|byte(typ))
	switch {
	case n < 126:
		return append(b, byte(n))
	case n <= 0xffff:
		return binary.BigEndian.AppendUint16(append(b, 126), uint16(n))
	default:
		return binary.BigEndian.AppendUint64(append(b, 127), uint64(n))
	}
}

// encodeFrame returns a frame of typ whose payload is data, preceded by
// head and a newline when framed is set (the positions framing), and the
// offset of the payload, head included, in it.
func encodeFrame(typ websocket.MessageType, head string, framed bool, data []byte) ([]byte, int) {
	n := len(data)
	if framed {
		n += len(head) + 1
	}
	hl := frameHeaderLen(n)
	b := appendFrameHeader(make([]byte, 0, hl+n), typ, n)
	if framed {
		b = append(b, head...)
		b = append(b, '\n')
	}
	return append(b, data...), hl
}

// frameLen returns the length of the whole frame b begins with, header,
// masking key and payload, or -1 when b is too short to hold its header.
func frameLen(b []byte) int {
	if len(b) < 2 {
		return -1
	}
	h, n := 2, int(b[1]&0x7f)
	switch n {
	case 126:
		if len(b) < 4 {
			return -1
		}
		h, n = 4, int(binary.BigEndian.Uint16(b[2:]))
	case 127:
		if len(b) < 10 {
			return -1
		}
		h = 10
		u := binary.BigEndian.Uint64(b[2:])
		if u > 1<<40 {
			u = 1 << 40 // never from the library; bounds the arithmetic
		}
		n = int(u)
	}
	if b[1]&0x80 != 0 {
		h += 4
	}
	return h + n
}

// opClose is the opcode of a close frame.
const opClose = 0x8

// libFrames finds the frames in what the websocket library writes, so that
// each goes to the socket whole, never split around one of the hub's. The
// library's buffer holds a whole control frame, so a frame normally comes in
// one write; one split over several writes is kept in part until complete.
type libFrames struct {
	part []byte
}

// next takes the next whole frame from p, with what was kept of it before:
// it returns the frame and what of p follows it, or a nil frame when p ends
// inside one, which it keeps.
func (l *libFrames) next(p []byte) (frame, rest []byte) {
	if len(l.part) == 0 {
		if n := frameLen(p); n >= 0 && n <= len(p) {
			return p[:n:n], p[n:]
		}
		l.part = append(l.part, p...)
		return nil, nil
	}
	had := len(l.part)
	l.part = append(l.part, p...)
	n := frameLen(l.part)
	if n < 0 || n > len(l.part) {
		return nil, nil
	}
	frame, l.part = l.part[:n:n], nil
	return frame, p[n-had:]
}

// size is what m counts against the send queue's bounds: its payload's
// bytes (a head included), as when the queue held payloads alone.
func (m *outMsg) size() int {
	if m.typ != frameMsg || len(m.data) < 2 {
		return len(m.data)
	}
	switch m.data[1] & 0x7f {
	case 126:
		return len(m.data) - 4
	case 127:
		return len(m.data) - 10
	default:
		return len(m.data) - 2
	}
}
