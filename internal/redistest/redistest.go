// Package redistest starts real redis-server processes on loopback for
// wshub's tests.
//
// Start runs one server, StartCluster a Redis Cluster of masters, and
// NewProxy a TCP proxy that can cut or freeze the link to a server. Every
// server, connection and goroutine made here ends in the test's cleanup, so
// tests may check for leaked goroutines with go.uber.org/goleak. While a
// server runs no goroutine of this package waits for it (on unix systems).
//
// When redis-server is not installed the tests that need it are skipped,
// unless the environment variable named by RequireEnv is "1", as it is in CI.
package redistest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// RequireEnv is the environment variable ("WSHUB_REQUIRE_REDIS") that turns
// a missing redis-server from a skip into a failure; CI sets it to 1.
const RequireEnv = "WSHUB_REQUIRE_REDIS"

// Bounds of the waits.
const (
	readyTimeout   = 10 * time.Second       // for a server to answer PING
	exitTimeout    = 10 * time.Second       // for a signalled server to exit
	restartWindow  = 5 * time.Second        // to retry a restart on a busy port
	clusterTimeout = 15 * time.Second       // for a cluster to become ready
	pingTimeout    = 500 * time.Millisecond // for one PING
	dialTimeout    = 2 * time.Second        // for the proxy to reach its target
)

// Binary returns the path of redis-server, or skips tb (t.Skip with a clear
// message naming the package to install) when it is not installed — or
// fails tb (t.Fatal) when RequireEnv is "1".
func Binary(tb testing.TB) string {
	tb.Helper()
	if path, err := exec.LookPath("redis-server"); err == nil {
		return path
	}
	for _, path := range []string{"/usr/bin/redis-server", "/usr/local/bin/redis-server", "/opt/homebrew/bin/redis-server"} {
		if fi, err := os.Stat(path); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return path
		}
	}
	const msg = "redistest: redis-server not found in PATH; install the redis-server package (e.g. apt-get install redis-server, or brew install redis)"
	if os.Getenv(RequireEnv) == "1" {
		tb.Fatal(msg + "; failing because " + RequireEnv + "=1")
	}
	tb.Skip(msg + " to run this test (set " + RequireEnv + "=1 to make this a failure)")
	return ""
}

// freePort returns a port of 127.0.0.1 that was free a moment ago. With bus
// set, port+10000 (a cluster node's bus port) was free too.
func freePort(bus bool) (int, error) {
	var lastErr error
	for i := 0; i < 200; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("redistest: find a free port: %w", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		if !bus {
			_ = l.Close()
			return port, nil
		}
		if port+10000 > 65535 {
			_ = l.Close()
			continue
		}
		l2, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port+10000))
		_ = l.Close()
		if err != nil {
			lastErr = err
			continue
		}
		_ = l2.Close()
		return port, nil
	}
	return 0, fmt.Errorf("redistest: no free port with a free bus port (port+10000) after 200 tries: %v", lastErr)
}

// redisError is an error reply of Redis.
type redisError string

func (e redisError) Error() string { return string(e) }

// do sends one command to addr on a new connection and returns its reply,
// which must be a simple string, an error, an integer or a bulk string.
func do(addr string, timeout time.Duration, args ...string) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(conn, b.String()); err != nil {
		return "", err
	}
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", errors.New("empty reply")
	}
	switch line[0] {
	case '+', ':':
		return line[1:], nil
	case '-':
		return "", redisError(line[1:])
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return "", fmt.Errorf("bad bulk length %q", line)
		}
		if n < 0 {
			return "", nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	default:
		return "", fmt.Errorf("unexpected reply %q", line)
	}
}

// ping reports whether the server at addr answers PING with PONG.
func ping(addr string) error {
	reply, err := do(addr, pingTimeout, "PING")
	if err != nil {
		return err
	}
	if reply != "PONG" {
		return fmt.Errorf("PING answered %q", reply)
	}
	return nil
}
