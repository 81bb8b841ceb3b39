package redis

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// encodePush writes a reply of a subscribed connection as Redis does.
func encodePush(kind string, elems ...any) []byte {
	b := []byte("*")
	b = append(b, []byte(strconv.Itoa(1+len(elems)))...)
	b = append(b, "\r\n"...)
	b = appendBulk(b, kind)
	for _, e := range elems {
		switch e := e.(type) {
		case string:
			b = appendBulk(b, e)
		case int:
			b = append(b, ':')
			b = append(b, []byte(strconv.Itoa(e))...)
			b = append(b, "\r\n"...)
		}
	}
	return b
}

func TestRespReaderReadsWhatRedisSends(t *testing.T) {
	var in bytes.Buffer
	in.Write(encodePush("subscribe", "wshub:c", 1))
	in.Write(encodePush("message", "wshub:c", "hello\r\nworld"))
	in.Write(encodePush("smessage", "{s}c", ""))
	in.Write(encodePush("ssubscribe", "{s}c", 2))
	in.Write(encodePush("unsubscribe", "wshub:c", 0))
	in.Write(encodePush("sunsubscribe", "{s}c", 0))
	in.Write(encodePush("pong", "wshub-up"))
	in.WriteString("-ERR something went wrong\r\n")

	rr := newRespReader(&in)
	want := []struct {
		kind             pushKind
		channel, payload string
	}{
		{pushSubscribe, "wshub:c", ""},
		{pushMessage, "wshub:c", "hello\r\nworld"},
		{pushMessage, "{s}c", ""},
		{pushSubscribe, "{s}c", ""},
		{pushUnsubscribe, "wshub:c", ""},
		{pushSUnsubscribe, "{s}c", ""},
		{pushPong, "", "wshub-up"},
	}
	for i, w := range want {
		p, err := rr.readPush()
		require.NoError(t, err, "reply %d", i)
		assert.Equal(t, w.kind, p.kind, "reply %d", i)
		assert.Equal(t, w.channel, string(p.channel), "reply %d", i)
		assert.Equal(t, w.payload, string(p.payload), "reply %d", i)
	}
	_, err := rr.readPush()
	var re respError
	require.ErrorAs(t, err, &re)
	assert.Equal(t, "ERR something went wrong", string(re))
	_, err = rr.readPush()
	assert.ErrorIs(t, err, io.EOF)
}

func TestRespReaderRejectsWhatASubscribedConnectionNeverSends(t *testing.T) {
	for name, in := range map[string]string{
		"a status":              "+OK\r\n",
		"an integer":            ":1\r\n",
		"a bare bulk string":    "$1\r\nx\r\n",
		"an empty array":        "*0\r\n",
		"a null array":          "*-1\r\n",
		"too many elements":     "*4\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\np\r\n$1\r\nq\r\n",
		"an unknown kind":       "*3\r\n$8\r\npmessage\r\n$1\r\nc\r\n$1\r\np\r\n",
		"a long kind":           "*3\r\n$17\r\nmessagemessagemes\r\n$1\r\nc\r\n$1\r\np\r\n",
		"a message of two":      "*2\r\n$7\r\nmessage\r\n$1\r\nc\r\n",
		"a pong of three":       "*3\r\n$4\r\npong\r\n$1\r\nc\r\n$1\r\np\r\n",
		"a count not an int":    "*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n$1\r\n1\r\n",
		"a bad length":          "*3\r\n$7\r\nmessage\r\n$x\r\nc\r\n$1\r\np\r\n",
		"a negative length":     "*3\r\n$7\r\nmessage\r\n$-1\r\n$1\r\np\r\n",
		"a bulk past its CRLF":  "*3\r\n$7\r\nmessage\r\n$1\r\ncc\r\n$1\r\np\r\n",
		"a line without CR":     "*3\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\np\r\n",
		"a channel too long":    "*3\r\n$7\r\nmessage\r\n$70000\r\n",
		"a payload beyond max":  "*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$536870913\r\n",
		"a nested array":        "*3\r\n*1\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\np\r\n",
		"an overflowing length": "*99999999999999999999\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := newRespReader(strings.NewReader(in)).readPush()
			require.Error(t, err)
			assert.ErrorIs(t, err, errResp)
		})
	}
	for name, in := range map[string]string{
		"cut in a header":  "*3\r\n$7\r\nmess",
		"cut in a payload": "*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$10\r\nabc",
		"cut before CRLF":  "*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\np",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := newRespReader(strings.NewReader(in)).readPush()
			assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
		})
	}
}

// TestRespReaderDoesNotTrustALength checks that a header claiming a huge
// payload costs memory only as the payload arrives.
func TestRespReaderDoesNotTrustALength(t *testing.T) {
	in := "*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$536870912\r\n" + strings.Repeat("x", 1000)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := newRespReader(strings.NewReader(in)).readPush()
	runtime.ReadMemStats(&after)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	assert.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(16<<20), "allocated for the claim, not for what came")
}

// TestRespReaderLargePayload reads a payload above the size allocated at
// once, byte for byte.
func TestRespReaderLargePayload(t *testing.T) {
	payload := bytes.Repeat([]byte("0123456789abcdef"), (respAllocAtOnce+4096)/16)
	in := encodePush("message", "c", string(payload))
	p, err := newRespReader(bytes.NewReader(in)).readPush()
	require.NoError(t, err)
	assert.Equal(t, "c", string(p.channel))
	assert.True(t, bytes.Equal(payload, p.payload))
}

// TestRespReaderAllocatesOnlyThePayload is the point of the reader: a
// message costs one allocation, its payload.
func TestRespReaderAllocatesOnlyThePayload(t *testing.T) {
	msg := encodePush("message", "wshub:{3}:user:42", strings.Repeat("p", 200))
	stream := bytes.Repeat(msg, 1000)
	r := bytes.NewReader(stream)
	rr := newRespReader(r)
	allocs := testing.AllocsPerRun(500, func() {
		p, err := rr.readPush()
		if err != nil || p.kind != pushMessage || len(p.payload) != 200 {
			t.Fatalf("%v %v", p, err)
		}
	})
	assert.LessOrEqual(t, allocs, 1.0)
}

func TestAppendCommand(t *testing.T) {
	assert.Equal(t, "*3\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n$0\r\n\r\n", string(appendCommand(nil, "SUBSCRIBE", "a", "")))
}

// FuzzRespReader feeds the reader arbitrary bytes: it must never panic,
// and what it returns must be a reply a subscribed connection sends, with
// its channel within bounds; a message written as Redis writes it must
// read back whole after whatever came before.
func FuzzRespReader(f *testing.F) {
	f.Add([]byte(encodePush("message", "c", "p")), "chan", []byte("payload"))
	f.Add([]byte(encodePush("subscribe", "c", 3)), "", []byte{})
	f.Add([]byte(encodePush("pong", "wshub-up")), "x", []byte("\r\n"))
	f.Add([]byte("-ERR x\r\n"), "c", []byte("p"))
	f.Add([]byte("*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\np"), "c", []byte("p"))
	f.Fuzz(func(t *testing.T, prefix []byte, channel string, payload []byte) {
		rr := newRespReader(bytes.NewReader(prefix))
		for {
			p, err := rr.readPush()
			if err != nil {
				break
			}
			if p.kind < pushMessage || p.kind > pushPong {
				t.Fatalf("kind %d", p.kind)
			}
			if len(p.channel) > maxRespChannel {
				t.Fatalf("channel of %d bytes", len(p.channel))
			}
		}
		if len(channel) > maxRespChannel {
			return
		}
		in := append(encodePush("pong", "x"), encodePush("message", channel, string(payload))...)
		rr = newRespReader(bytes.NewReader(in))
		if _, err := rr.readPush(); err != nil {
			t.Fatal(err)
		}
		p, err := rr.readPush()
		if err != nil {
			t.Fatal(err)
		}
		if p.kind != pushMessage || string(p.channel) != channel || !bytes.Equal(p.payload, payload) {
			t.Fatalf("read back %v", p)
		}
		if _, err := rr.readPush(); !errors.Is(err, io.EOF) {
			t.Fatalf("after the message: %v", err)
		}
	})
}
