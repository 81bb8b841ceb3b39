package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/wshub/wshub"
	"github.com/wshub/wshub/backplane"
	"github.com/wshub/wshub/backplane/memory"
	"github.com/wshub/wshub/internal/redistest"
)

// childEnv, set to 1, makes the test binary run the notify command with its
// arguments instead of the tests (see TestMain): an instance in a process
// of its own, for the browser test to kill.
const childEnv = "WSHUB_NOTIFY_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		main()
		os.Exit(0)
	}
	// go-redis's pool finishes a dial it started in a goroutine that can
	// outlive Client.Close for a moment when the server is gone.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).queuedNewConn.func2"))
}

// waitFor bounds every wait: a failure guard, not a timing assertion.
const waitFor = 10 * time.Second

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// logBus returns a memory bus that keeps logs, as run's.
func logBus(t *testing.T) *memory.Bus {
	bus := memory.NewBus()
	require.NoError(t, bus.SetLogLimit(memoryLogMessages, memoryLogAge))
	return bus
}

// startInstance serves an instance on bp with an httptest server; the
// test's cleanup closes both (and bp, which it was handed).
func startInstance(t *testing.T, bp backplane.Backplane, id string, kept bool) (*httptest.Server, *notifier) {
	t.Helper()
	n, err := newNotifier(bp, id, kept, quiet)
	require.NoError(t, err)
	srv := httptest.NewServer(n)
	var once sync.Once
	stop := func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			assert.NoError(t, n.Close(ctx))
			srv.Close()
			if bp != nil {
				assert.NoError(t, bp.Close())
			}
		})
	}
	t.Cleanup(stop)
	return srv, n
}

// memoryNode adds a node to bus.
func memoryNode(t *testing.T, bus *memory.Bus, name string) *memory.Node {
	t.Helper()
	n, err := bus.NewNode(name)
	require.NoError(t, err)
	return n
}

// message is any message a device receives.
type message struct {
	Type      string `json:"type"`
	ID        string `json:"id"`
	Text      string `json:"text"`
	From      string `json:"from"`
	At        string `json:"at"`
	Device    string `json:"device"`
	Node      string `json:"node"`
	Backplane string `json:"backplane"`
	Gap       bool   `json:"gap"`
}

// device is a device's WebSocket, in the positions framing as the page's
// client speaks it.
type device struct {
	t    *testing.T
	conn *websocket.Conn
	head string // the last head with an offset
}

// dial connects a device to srv, resuming after since (a head) when set.
func dial(t *testing.T, base, id string, since ...string) *device {
	t.Helper()
	q := url.Values{"device": {id}, wshub.PositionsParam: {"1"}, wshub.ClientParam: {"tab-" + id}}
	for _, h := range since {
		q.Add(wshub.SinceParam, h)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, strings.Replace(base, "http", "ws", 1)+"/ws?"+q.Encode(), nil)
	require.NoError(t, err)
	d := &device{t: t, conn: conn}
	t.Cleanup(func() { _ = conn.CloseNow() })
	return d
}

// next reads the next frame: its head and its message (zero for a head
// alone, such as "!recovered u:phone-1").
func (d *device) next() (string, message) {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	_, data, err := d.conn.Read(ctx)
	require.NoError(d.t, err)
	head, body, ok := bytes.Cut(data, []byte("\n"))
	require.True(d.t, ok, "no head in %q", data)
	var m message
	if len(body) > 0 {
		require.NoError(d.t, json.Unmarshal(body, &m), "%s", body)
	}
	if h := string(head); h != "" && !strings.HasPrefix(h, "!") {
		d.head = h
	}
	return string(head), m
}

// closedBy closes the device's instance, reading meanwhile as a client
// does (Close waits for the client's answer to its close frame), and
// returns how the device's connection ended.
func (d *device) closedBy(n *notifier) error {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	read := make(chan error, 1)
	go func() {
		for {
			if _, _, err := d.conn.Read(ctx); err != nil {
				read <- err
				return
			}
		}
	}()
	require.NoError(d.t, n.Close(ctx))
	return <-read
}

// expect reads the next message and checks its type.
func (d *device) expect(typ string) message {
	d.t.Helper()
	_, m := d.next()
	require.Equal(d.t, typ, m.Type, "%+v", m)
	return m
}

// notify POSTs a notification to an instance.
func notify(t *testing.T, base, to, text string) (int, sendResult, errorResult) {
	t.Helper()
	body, err := json.Marshal(sendRequest{To: to, Text: text})
	require.NoError(t, err)
	return postRaw(t, base, string(body))
}

func postRaw(t *testing.T, base, body string) (int, sendResult, errorResult) {
	t.Helper()
	resp, err := http.Post(base+"/notify", "application/json", strings.NewReader(body))
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var res sendResult
	var e errorResult
	if resp.StatusCode == http.StatusOK {
		require.NoError(t, json.Unmarshal(raw, &res), "%s", raw)
	} else {
		require.NoError(t, json.Unmarshal(raw, &e), "%s", raw)
	}
	return resp.StatusCode, res, e
}

func online(t *testing.T, base, id string) int {
	t.Helper()
	resp, err := http.Get(base + "/online?device=" + url.QueryEscape(id))
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var v struct{ Sessions int }
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&v))
	return v.Sessions
}

// The job: a device holds a socket to instance 1; a request that lands on
// instance 2 reaches it, and the sender learns how many sessions the
// device has anywhere. A second session on instance 2 gets it too.
func TestSendFromAnyInstance(t *testing.T) {
	bus := logBus(t)
	one, _ := startInstance(t, memoryNode(t, bus, "n1"), "n1", true)
	two, _ := startInstance(t, memoryNode(t, bus, "n2"), "n2", true)

	phone := dial(t, one.URL, "phone-1")
	w := phone.expect("welcome")
	assert.Equal(t, message{Type: "welcome", Device: "phone-1", Node: "n1", Backplane: "up"}, w)
	assert.Equal(t, 1, online(t, two.URL, "phone-1"), "instance 2 sees the device on instance 1")

	code, res, _ := notify(t, two.URL, "phone-1", "order 1 placed")
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, sendResult{ID: "n2-1", To: "phone-1", Node: "n2", Sessions: 1, Kept: true}, res)
	got := phone.expect("notification")
	assert.Equal(t, "n2-1", got.ID)
	assert.Equal(t, "order 1 placed", got.Text)
	assert.Equal(t, "n2", got.From)
	_, err := time.Parse(time.RFC3339, got.At)
	assert.NoError(t, err)
	assert.Regexp(t, `^[0-9a-f]+:\S+ u:phone-1$`, phone.head, "a user message carries its offset")

	tablet := dial(t, two.URL, "phone-1")
	tablet.expect("welcome")
	code, res, _ = notify(t, one.URL, "phone-1", "order 2 placed")
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, 2, res.Sessions)
	for _, d := range []*device{phone, tablet} {
		assert.Equal(t, "order 2 placed", d.expect("notification").Text)
	}
}

// A device connected nowhere is reported offline; the notification is kept
// only where the backplane keeps a log.
func TestOfflineDevice(t *testing.T) {
	bus := logBus(t)
	logged, _ := startInstance(t, memoryNode(t, bus, "n1"), "n1", true)
	alone, _ := startInstance(t, nil, "solo", false)
	for _, tc := range []struct {
		name string
		base string
		kept bool
	}{{"log", logged.URL, true}, {"no log", alone.URL, false}} {
		t.Run(tc.name, func(t *testing.T) {
			code, res, _ := notify(t, tc.base, "nobody", "hello?")
			require.Equal(t, http.StatusOK, code)
			assert.Equal(t, 0, res.Sessions)
			assert.Equal(t, tc.kept, res.Kept)
			assert.Equal(t, 0, online(t, tc.base, "nobody"))
		})
	}
}

// A device whose instance restarts reconnects to another one with the head
// of the last notification it saw, and gets what was sent meanwhile first,
// once and in order, then what is sent live.
func TestResumeAfterInstanceRestart(t *testing.T) {
	bus := logBus(t)
	n1 := memoryNode(t, bus, "n1")
	one, inst1 := startInstance(t, n1, "n1", true)
	two, _ := startInstance(t, memoryNode(t, bus, "n2"), "n2", true)

	phone := dial(t, one.URL, "phone-1")
	phone.expect("welcome")
	_, _, _ = notify(t, two.URL, "phone-1", "before")
	require.Equal(t, "before", phone.expect("notification").Text)

	// Instance 1 goes away: the device sees 1001 and is offline.
	assert.Equal(t, websocket.StatusGoingAway, websocket.CloseStatus(phone.closedBy(inst1)))
	require.Eventually(t, func() bool { return online(t, two.URL, "phone-1") == 0 }, waitFor, 10*time.Millisecond)

	for i := 1; i <= 3; i++ {
		code, res, _ := notify(t, two.URL, "phone-1", "while away "+strconv.Itoa(i))
		require.Equal(t, http.StatusOK, code)
		assert.Equal(t, 0, res.Sessions, "offline")
		assert.True(t, res.Kept)
	}

	back := dial(t, two.URL, "phone-1", phone.head)
	back.expect("welcome")
	for i := 1; i <= 3; i++ {
		assert.Equal(t, "while away "+strconv.Itoa(i), back.expect("notification").Text)
	}
	head, _ := back.next()
	assert.Equal(t, "!recovered u:phone-1", head)
	_, _, _ = notify(t, two.URL, "phone-1", "live")
	assert.Equal(t, "live", back.expect("notification").Text)
}

// The device is told when its instance loses the backplane and when it
// gets it back; a notification sent meanwhile is refused, not lost
// silently.
func TestBackplaneOutageIsShown(t *testing.T) {
	bus := logBus(t)
	one, inst := startInstance(t, memoryNode(t, bus, "n1"), "n1", true)
	phone := dial(t, one.URL, "phone-1")
	phone.expect("welcome")

	require.NoError(t, bus.Partition("n1"))
	assert.Equal(t, message{Type: "backplane", Node: "n1", Backplane: "down"}, phone.expect("backplane"))
	code, _, e := notify(t, one.URL, "phone-1", "during the outage")
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Contains(t, e.Error, "not sent")
	// A device that connects meanwhile (if the hub can accept it) is
	// told in its welcome.
	assert.Equal(t, "down", inst.backplaneState())

	require.NoError(t, bus.Heal("n1"))
	up := phone.expect("backplane")
	assert.Equal(t, "up", up.Backplane)
	require.Eventually(t, func() bool {
		code, _, _ := notify(t, one.URL, "phone-1", "after")
		return code == http.StatusOK
	}, waitFor, 20*time.Millisecond)
	assert.Equal(t, "after", phone.expect("notification").Text)
}

func TestBadRequests(t *testing.T) {
	srv, _ := startInstance(t, nil, "n1", false)
	for _, tc := range []struct {
		name, body, want string
	}{
		{"not JSON", "{", "invalid JSON"},
		{"no device", `{"text":"x"}`, `"to" must be a device ID`},
		{"bad device", `{"to":"a b","text":"x"}`, `"to" must be a device ID`},
		{"empty text", `{"to":"p","text":"  "}`, "empty text"},
		{"long text", `{"to":"p","text":"` + strings.Repeat("x", maxTextLen+1) + `"}`, "text longer than 500 bytes"},
		{"huge body", `{"to":"p","text":"` + strings.Repeat("x", maxBody) + `"}`, "invalid JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, e := postRaw(t, srv.URL, tc.body)
			assert.Equal(t, http.StatusBadRequest, code)
			assert.Contains(t, e.Error, tc.want)
		})
	}
	resp, err := http.Get(srv.URL + "/online?device=")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)

	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	_, resp, err = websocket.Dial(ctx, strings.Replace(srv.URL, "http", "ws", 1)+"/ws", nil)
	require.Error(t, err)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "a socket needs a device ID")
}

// The pages, the client module and the endpoints for operations are served.
func TestPages(t *testing.T) {
	srv, _ := startInstance(t, nil, "n1", false)
	for path, want := range map[string]string{
		"/":         `connect(` + "`/ws?device=",
		"/admin":    `fetch("/notify"`,
		"/wshub.js": "export function connect(",
		"/healthz":  "",
		"/readyz":   "",
		"/metrics":  "wshub_",
	} {
		resp, err := http.Get(srv.URL + path)
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		assert.Equal(t, http.StatusOK, resp.StatusCode, path)
		assert.Contains(t, string(body), want, path)
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

var listening = regexp.MustCompile(`msg="notify listening" addr=(\S+) node=(\S+)`)

// startRun runs the command in the background with args until the test
// ends, and returns the base URLs of its instances by node ID once they
// all listen.
func startRun(t *testing.T, instances int, args ...string) map[string]string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, out) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			assert.NoError(t, err)
		case <-time.After(waitFor + shutdownTimeout):
			t.Errorf("run did not return: %s", out)
		}
	})
	bases := map[string]string{}
	require.Eventually(t, func() bool {
		for _, m := range listening.FindAllStringSubmatch(out.String(), -1) {
			bases[m[2]] = "http://" + m[1]
		}
		return len(bases) == instances
	}, waitFor, 5*time.Millisecond, "%s", out)
	return bases
}

// The one command: two instances in one process on a memory bus; a
// device on the first gets what is sent to the second.
func TestRunMemory(t *testing.T) {
	bases := startRun(t, 2, "-addr", "127.0.0.1:0", "-admin-addr", "127.0.0.1:0", "-drain", "1s")
	phone := dial(t, bases["n1"], "phone-1")
	phone.expect("welcome")
	code, res, _ := notify(t, bases["n2"], "phone-1", "from the other instance")
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, 1, res.Sessions)
	assert.True(t, res.Kept)
	assert.Equal(t, "from the other instance", phone.expect("notification").Text)
}

func TestRunFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"node without backplane", []string{"-node", "a"}, "-node needs -backplane"},
		{"admin-addr with backplane", []string{"-backplane", "memory://", "-admin-addr", ":1"}, "-admin-addr is for the memory instances"},
		{"arguments", []string{"extra"}, "unexpected arguments"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := run(context.Background(), tc.args, io.Discard)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	assert.False(t, keepsLog("memory://", memoryNodeOf(t)), "a memory:// node keeps no log")
}

func memoryNodeOf(t *testing.T) backplane.Backplane {
	n := memoryNode(t, memory.NewBus(), "")
	t.Cleanup(func() { _ = n.Close() })
	return n
}

// On a real Redis in Streams mode, across two instances: a device on
// instance 1 gets what lands on instance 2, and after instance 1 goes away
// it resumes on instance 2 with what was sent meanwhile. In pub/sub mode
// nothing is kept.
func TestRedis(t *testing.T) {
	srv := redistest.Start(t)
	prefix := "notify-" + strconv.FormatUint(rand.Uint64(), 16) + ":"
	open := func(mode string) backplane.Backplane {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		bp, err := backplane.Open(ctx, "redis://"+srv.Addr()+"/0?mode="+mode+"&prefix="+prefix+mode+":", backplane.WithLogger(quiet))
		require.NoError(t, err)
		return bp
	}
	t.Run("streams", func(t *testing.T) {
		bp1 := open("streams")
		one, inst1 := startInstance(t, bp1, "n1", keepsLog("redis://x?mode=streams", bp1))
		bp2 := open("streams")
		two, _ := startInstance(t, bp2, "n2", keepsLog("redis://x?mode=streams", bp2))
		phone := dial(t, one.URL, "phone-1")
		phone.expect("welcome")
		code, res, _ := notify(t, two.URL, "phone-1", "first")
		require.Equal(t, http.StatusOK, code)
		assert.Equal(t, sendResult{ID: "n2-1", To: "phone-1", Node: "n2", Sessions: 1, Kept: true}, res)
		assert.Equal(t, "first", phone.expect("notification").Text)

		assert.Equal(t, websocket.StatusGoingAway, websocket.CloseStatus(phone.closedBy(inst1)))
		_, _, _ = notify(t, two.URL, "phone-1", "while away")
		back := dial(t, two.URL, "phone-1", phone.head)
		back.expect("welcome")
		assert.Equal(t, "while away", back.expect("notification").Text)
		head, _ := back.next()
		assert.Equal(t, "!recovered u:phone-1", head)
	})
	t.Run("pubsub", func(t *testing.T) {
		bp := open("pubsub")
		base, _ := startInstance(t, bp, "p1", keepsLog("redis://x", bp))
		code, res, _ := notify(t, base.URL, "nobody", "lost")
		require.Equal(t, http.StatusOK, code)
		assert.False(t, res.Kept)
	})
}
