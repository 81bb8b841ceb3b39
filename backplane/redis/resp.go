package redis

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// The RESP2 wire format of a subscription connection: the commands a
// subscriber sends, and the replies Redis sends on a subscribed connection.
// Every reply there is an array: a message, a (un)subscribe confirmation or
// the answer to a PING.

// pushKind is what a reply on a subscribed connection is.
type pushKind uint8

const (
	pushMessage      pushKind = iota + 1 // "message" or "smessage"
	pushSubscribe                        // "subscribe" or "ssubscribe"
	pushUnsubscribe                      // "unsubscribe"
	pushSUnsubscribe                     // "sunsubscribe"
	pushPong                             // "pong"
)

// push is one reply read from a subscribed connection. channel is valid
// until the next read; payload belongs to the caller.
type push struct {
	kind    pushKind
	channel []byte // the channel of a message or a confirmation
	payload []byte // a message's payload, or a PING's
}

// Bounds on what a reply may claim, so that a forged or corrupt stream
// costs a clear error and not memory.
const (
	maxRespBulk    = 512 << 20 // Redis's own proto-max-bulk-len default
	maxRespChannel = 64 << 10  // MaxChannelLength and any prefix of ours
	// A bulk string larger than this is read as it arrives, not allocated
	// whole from its header.
	respAllocAtOnce = 1 << 20
)

// errResp marks a reply that is not what a subscribed connection sends.
var errResp = errors.New("redis backplane: malformed reply on the subscription connection")

// respError is an error reply from Redis.
type respError string

func (e respError) Error() string { return "redis: " + string(e) }

// respReader reads the replies of a subscribed connection.
type respReader struct {
	r       *bufio.Reader
	channel []byte   // reused for the channel of each reply
	kind    [16]byte // reused for the kind of each reply
}

func newRespReader(r io.Reader) *respReader {
	return &respReader{r: bufio.NewReaderSize(r, 32<<10), channel: make([]byte, 0, 128)}
}

// line reads one CRLF-terminated line, without the CRLF. The slice is
// valid until the next read.
func (rr *respReader) line() ([]byte, error) {
	b, err := rr.r.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, fmt.Errorf("%w: a line longer than %d bytes", errResp, rr.r.Size())
		}
		return nil, err
	}
	if len(b) < 3 || b[len(b)-2] != '\r' {
		return nil, fmt.Errorf("%w: a line not ended by CRLF", errResp)
	}
	return b[:len(b)-2], nil
}

// header reads a line that starts with want and returns its integer.
func (rr *respReader) header(want byte) (int64, error) {
	b, err := rr.line()
	if err != nil {
		return 0, err
	}
	switch b[0] {
	case want:
	case '-':
		return 0, respError(b[1:])
	default:
		return 0, fmt.Errorf("%w: %q where %q was expected", errResp, b[0], want)
	}
	n, ok := parseRespInt(b[1:])
	if !ok {
		return 0, fmt.Errorf("%w: a bad length", errResp)
	}
	return n, nil
}

// parseRespInt parses a decimal integer of at most 18 digits.
func parseRespInt(b []byte) (int64, bool) {
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	if neg {
		n = -n
	}
	return n, true
}

// bulk reads a bulk string of at most max bytes, appending it to dst.
func (rr *respReader) bulk(dst []byte, max int64) ([]byte, error) {
	n, err := rr.header('$')
	if err != nil {
		return nil, err
	}
	if n < 0 || n > max {
		return nil, fmt.Errorf("%w: a bulk string of %d bytes", errResp, n)
	}
	if n <= respAllocAtOnce || int64(cap(dst)-len(dst)) >= n {
		start := len(dst)
		if int64(cap(dst)-start) < n {
			grown := make([]byte, start, start+int(n))
			copy(grown, dst)
			dst = grown
		}
		dst = dst[:start+int(n)]
		if _, err := io.ReadFull(rr.r, dst[start:]); err != nil {
			return nil, unexpectedEOF(err)
		}
	} else {
		var buf bytes.Buffer
		buf.Write(dst)
		buf.Grow(respAllocAtOnce)
		if m, err := io.CopyN(&buf, rr.r, n); err != nil || m != n {
			return nil, unexpectedEOF(err)
		}
		dst = buf.Bytes()
	}
	if err := rr.crlf(); err != nil {
		return nil, err
	}
	return dst, nil
}

func (rr *respReader) crlf() error {
	for _, want := range []byte{'\r', '\n'} {
		c, err := rr.r.ReadByte()
		if err != nil {
			return unexpectedEOF(err)
		}
		if c != want {
			return fmt.Errorf("%w: a bulk string not ended by CRLF", errResp)
		}
	}
	return nil
}

func unexpectedEOF(err error) error {
	if err == nil || errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// kindOf names the first element of a reply.
func kindOf(b []byte) (pushKind, bool) {
	switch string(b) {
	case "message", "smessage":
		return pushMessage, true
	case "subscribe", "ssubscribe":
		return pushSubscribe, true
	case "unsubscribe":
		return pushUnsubscribe, true
	case "sunsubscribe":
		return pushSUnsubscribe, true
	case "pong":
		return pushPong, true
	}
	return 0, false
}

// readPush reads the next reply of a subscribed connection. An error reply
// from Redis is returned as a respError; anything else that a subscribed
// connection does not send is an error wrapping errResp.
func (rr *respReader) readPush() (push, error) {
	n, err := rr.header('*')
	if err != nil {
		return push{}, err
	}
	if n < 2 || n > 3 {
		return push{}, fmt.Errorf("%w: an array of %d elements", errResp, n)
	}
	kb, err := rr.bulk(rr.kind[:0], int64(len(rr.kind)))
	if err != nil {
		return push{}, err
	}
	kind, ok := kindOf(kb)
	if !ok {
		return push{}, fmt.Errorf("%w: a reply of kind %q", errResp, kb)
	}
	var p push
	p.kind = kind
	switch {
	case kind == pushPong && n == 2:
		if p.payload, err = rr.bulk(nil, maxRespBulk); err != nil {
			return push{}, err
		}
	case kind == pushMessage && n == 3:
		if rr.channel, err = rr.bulk(rr.channel[:0], maxRespChannel); err != nil {
			return push{}, err
		}
		if p.payload, err = rr.bulk(nil, maxRespBulk); err != nil {
			return push{}, err
		}
		p.channel = rr.channel
	case kind != pushPong && kind != pushMessage && n == 3:
		if rr.channel, err = rr.bulk(rr.channel[:0], maxRespChannel); err != nil {
			return push{}, err
		}
		if _, err := rr.header(':'); err != nil { // subscriptions left
			return push{}, err
		}
		p.channel = rr.channel
	default:
		return push{}, fmt.Errorf("%w: a %q reply of %d elements", errResp, kb, n)
	}
	if cap(rr.channel) > 4<<10 {
		rr.channel = make([]byte, 0, 128) // do not keep a long one's buffer
	}
	return p, nil
}

// readStatus reads a simple-string reply, such as AUTH's +OK.
func (rr *respReader) readStatus() (string, error) {
	b, err := rr.line()
	if err != nil {
		return "", err
	}
	switch b[0] {
	case '+':
		return string(b[1:]), nil
	case '-':
		return "", respError(b[1:])
	}
	return "", fmt.Errorf("%w: %q where a status was expected", errResp, b[0])
}

// appendCommand appends a command in RESP2 form to dst.
func appendCommand(dst []byte, name string, args ...string) []byte {
	dst = append(dst, '*')
	dst = strconv.AppendInt(dst, int64(1+len(args)), 10)
	dst = append(dst, '\r', '\n')
	dst = appendBulk(dst, name)
	for _, a := range args {
		dst = appendBulk(dst, a)
	}
	return dst
}

func appendBulk(dst []byte, s string) []byte {
	dst = append(dst, '$')
	dst = strconv.AppendInt(dst, int64(len(s)), 10)
	dst = append(dst, '\r', '\n')
	dst = append(dst, s...)
	return append(dst, '\r', '\n')
}
