package redistest_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/wshub/wshub/internal/redistest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// ctx returns a context that ends with the test, with a bound.
func ctx(t *testing.T) context.Context {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestStartPing(t *testing.T) {
	s := redistest.Start(t)
	require.True(t, strings.HasPrefix(s.Addr(), "127.0.0.1:"), s.Addr())
	require.Equal(t, "redis://"+s.Addr()+"/0", s.URL())
	opt, err := redis.ParseURL(s.URL())
	require.NoError(t, err)
	require.Equal(t, s.Addr(), opt.Addr)

	c := s.Client(t)
	require.NoError(t, c.Ping(ctx(t)).Err())
	require.NoError(t, c.Set(ctx(t), "k", "v", 0).Err())
	require.Equal(t, "v", c.Get(ctx(t), "k").Val())
}

func TestWithArgs(t *testing.T) {
	s := redistest.Start(t, redistest.WithArgs("--maxmemory", "12mb"))
	got, err := s.Client(t).ConfigGet(ctx(t), "maxmemory").Result()
	require.NoError(t, err)
	require.Equal(t, "12582912", got["maxmemory"])
}

func TestKillRestartKeepsAppendOnlyData(t *testing.T) {
	s := redistest.Start(t, redistest.WithAppendOnly())
	c := s.Client(t)
	require.NoError(t, c.Set(ctx(t), "survivor", "still here", 0).Err())

	s.Kill(t)
	s.Kill(t) // idempotent
	_, err := net.DialTimeout("tcp", s.Addr(), time.Second)
	require.Error(t, err, "nothing listens after Kill")

	addr := s.Addr()
	s.Restart(t)
	require.Equal(t, addr, s.Addr(), "same port after Restart")
	require.Equal(t, "still here", s.Client(t).Get(ctx(t), "survivor").Val())
	// The old client reconnects by itself.
	require.Eventually(t, func() bool {
		return c.Get(ctx(t), "survivor").Val() == "still here"
	}, 5*time.Second, 20*time.Millisecond)
}

func TestStopRestart(t *testing.T) {
	s := redistest.Start(t)
	s.Stop(t)
	s.Stop(t) // idempotent
	_, err := net.DialTimeout("tcp", s.Addr(), time.Second)
	require.Error(t, err, "nothing listens after Stop")
	s.Restart(t)
	require.NoError(t, s.Client(t).Ping(ctx(t)).Err())
	s.Restart(t) // restarting a running server stops it first
	require.NoError(t, s.Client(t).Ping(ctx(t)).Err())
}

func TestCluster(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	require.Len(t, c.Addrs(), 3)
	require.Len(t, c.Servers(), 3)

	cc := c.Client(t)
	const keys = 100
	for i := 0; i < keys; i++ {
		require.NoError(t, cc.Set(ctx(t), fmt.Sprintf("key:%d", i), i, 0).Err())
	}
	for i := 0; i < keys; i++ {
		got, err := cc.Get(ctx(t), fmt.Sprintf("key:%d", i)).Int()
		require.NoError(t, err)
		require.Equal(t, i, got)
	}

	var total int64
	nodesWithKeys := 0
	for _, s := range c.Servers() {
		n, err := s.Client(t).DBSize(ctx(t)).Result()
		require.NoError(t, err)
		total += n
		if n > 0 {
			nodesWithKeys++
		}
	}
	require.EqualValues(t, keys, total)
	require.Greater(t, nodesWithKeys, 1, "keys spread over the nodes")
}

func TestProxyCutHeal(t *testing.T) {
	s := redistest.Start(t)
	p := redistest.NewProxy(t, s.Addr())
	c := redis.NewClient(&redis.Options{
		Addr:         p.Addr(),
		MaxRetries:   -1,
		DialTimeout:  time.Second,
		ReadTimeout:  time.Second,
		WriteTimeout: time.Second,
	})
	t.Cleanup(func() { _ = c.Close() })

	require.NoError(t, c.Set(ctx(t), "k", "v", 0).Err())
	require.GreaterOrEqual(t, p.Conns(), 1)

	p.Cut()
	require.Equal(t, 0, p.Conns())
	require.Error(t, c.Get(ctx(t), "k").Err(), "commands fail while cut")
	require.Error(t, c.Get(ctx(t), "k").Err(), "new connections are refused while cut")
	require.Equal(t, 0, p.Conns())

	p.Heal()
	require.Eventually(t, func() bool {
		return c.Get(ctx(t), "k").Val() == "v"
	}, 5*time.Second, 20*time.Millisecond, "commands work again after Heal")
	require.GreaterOrEqual(t, p.Conns(), 1)
}

func TestProxyFreeze(t *testing.T) {
	s := redistest.Start(t)
	p := redistest.NewProxy(t, s.Addr())
	c := redis.NewClient(&redis.Options{
		Addr:         p.Addr(),
		MaxRetries:   -1,
		DialTimeout:  time.Second,
		ReadTimeout:  200 * time.Millisecond,
		WriteTimeout: 200 * time.Millisecond,
	})
	t.Cleanup(func() { _ = c.Close() })
	require.NoError(t, c.Ping(ctx(t)).Err())

	p.Freeze()
	require.GreaterOrEqual(t, p.Conns(), 1, "frozen connections stay open")
	start := time.Now()
	err := c.Ping(ctx(t)).Err()
	require.Error(t, err)
	var ne net.Error
	require.True(t, errors.As(err, &ne) && ne.Timeout(), "want a timeout, got %v", err)
	require.Less(t, time.Since(start), 5*time.Second)

	p.Heal()
	require.Eventually(t, func() bool {
		return c.Ping(ctx(t)).Err() == nil
	}, 5*time.Second, 20*time.Millisecond, "commands work again after Heal")
}

func TestProxyCloseWithOpenConns(t *testing.T) {
	s := redistest.Start(t)
	t.Run("frozen", func(t *testing.T) {
		p := redistest.NewProxy(t, s.Addr())
		conn, err := net.Dial("tcp", p.Addr())
		require.NoError(t, err)
		t.Cleanup(func() { _ = conn.Close() })
		p.Freeze()
		conn2, err := net.Dial("tcp", p.Addr())
		require.NoError(t, err)
		t.Cleanup(func() { _ = conn2.Close() })
		require.Eventually(t, func() bool { return p.Conns() == 2 }, 5*time.Second, 10*time.Millisecond)
		// The proxy's cleanup closes both and waits for its goroutines.
	})
}

func TestRestartWaitsForBusyPort(t *testing.T) {
	s := redistest.Start(t)
	s.Kill(t)
	l, err := net.Listen("tcp", s.Addr())
	require.NoError(t, err)
	released := make(chan struct{})
	timer := time.AfterFunc(500*time.Millisecond, func() {
		_ = l.Close()
		close(released)
	})
	t.Cleanup(func() {
		if timer.Stop() {
			_ = l.Close()
		}
	})
	s.Restart(t)
	<-released
	require.NoError(t, s.Client(t).Ping(ctx(t)).Err())
}

// fatalTB records a Fatal and ends the goroutine that called it.
type fatalTB struct {
	*testing.T
	msg string
}

func (f *fatalTB) Fatal(args ...any) {
	f.msg = fmt.Sprint(args...)
	runtime.Goexit()
}

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func TestStartFailureShowsLog(t *testing.T) {
	redistest.Binary(t)
	tb := &fatalTB{T: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		redistest.Start(tb, redistest.WithArgs("--no-such-option", "1"))
		t.Error("Start returned for a server that cannot start")
	}()
	<-done
	t.Log(tb.msg)
	require.Contains(t, tb.msg, "exited before answering PING")
	require.Contains(t, tb.msg, "no-such-option", "the log's tail is in the error")
}

func TestNoGoroutineWhileServerRuns(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("on windows a goroutine waits for each server")
	}
	redistest.Binary(t)
	// Deferred, so it runs before the cleanups, while the server runs.
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	s := redistest.Start(t)
	s.Kill(t)
	s.Restart(t)
}
