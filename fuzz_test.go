package wshub

import (
	"github.com/wshub/wshub/backplane"
	"net/http/httptest"
	"testing"

	"github.com/wshub/wshub/internal/envelope"
)

// FuzzReceive feeds arbitrary backplane payloads to a hub that holds a
// session: whatever arrives, the hub must count or apply it, never panic.
func FuzzReceive(f *testing.F) {
	for _, e := range []envelope.Envelope{
		{Op: envelope.OpUser, Target: "u", Payload: []byte("hi")},
		{Op: envelope.OpUser, Target: "u", Published: 1767225600123456, Payload: []byte("timed")},
		{Op: envelope.OpTopic, Target: "t", Client: "c", Published: 1 << 63, Payload: []byte("far off")},
		{Op: envelope.OpTopic, Flags: envelope.FlagBinary, Target: "t", Arg: "x", Payload: []byte{0}},
		{Op: envelope.OpSession, Target: "n.1"},
		{Op: envelope.OpJoin, Target: "u", Arg: "t"},
		{Op: envelope.OpLeave, Target: "u", Arg: "t"},
		{Op: envelope.OpDisconnect, Target: "u", Arg: "bye", Code: 4000},
		{Op: envelope.OpFlush, Target: "1"},
	} {
		f.Add(e.Encode())
	}
	f.Add([]byte{1, 6, 0, 1, 'u', 0, 0xff, 0xff, 0x03})
	h, err := New(&Options{Logger: quiet, NodeID: "n", SendQueueLen: 4, SlowPolicy: SlowDropOldest})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = h.Close(bg) })
	s := h.newSession(httptest.NewRequest("GET", "/", nil), "u")
	if err := h.register(bg, s); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { h.reg.remove(s) })

	f.Fuzz(func(t *testing.T, payload []byte) {
		h.receive(backplane.Message{Channel: "u:u", Payload: payload})
	})
}
