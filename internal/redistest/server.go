package redistest

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// logName is the file in a server's directory that gets redis-server's log
// and its standard output and error.
const logName = "redis.log"

// maxStartAttempts bounds how often Start picks a new port when another
// process took the free one first.
const maxStartAttempts = 5

// config is what the options set.
type config struct {
	appendOnly bool
	args       []string
	cluster    bool // a cluster node: cluster flags, and a free bus port
}

// Option changes how Start runs redis-server.
type Option func(*config)

// WithAppendOnly turns on the append-only file with appendfsync always, so
// that every write acknowledged before a Kill survives a Restart.
func WithAppendOnly() Option {
	return func(c *config) { c.appendOnly = true }
}

// WithArgs adds command-line arguments in "--key value" form, such as
// WithArgs("--maxmemory", "10mb"). They come after the defaults, so they
// override them.
func WithArgs(args ...string) Option {
	args = append([]string(nil), args...)
	return func(c *config) { c.args = append(c.args, args...) }
}

// Server is a redis-server process on 127.0.0.1 that the test's cleanup
// stops. Its methods may be called from several goroutines, but those that
// take a testing.TB fail it with Fatal, so call them from the test's
// goroutine.
type Server struct {
	bin  string
	dir  string
	cfg  config
	port int // fixed once Start returns

	mu     sync.Mutex // serializes starting and stopping
	proc   *process   // the last run, nil before the first
	logOff int64      // where the last run's log begins
}

// Start starts redis-server on a free port of 127.0.0.1 in a temp dir
// (tb.TempDir()), waits until it answers PING, and registers tb.Cleanup to
// stop it (SIGKILL then wait for the process, so no goroutine or process is
// left).
//
// The defaults are --bind 127.0.0.1 --port N --save "" --appendonly no
// --protected-mode no --daemonize no --loglevel warning --dir tempdir, with
// the log in a file of the temp dir whose tail is shown when the server fails
// to start. If another process takes the port first, Start tries another.
// Start skips tb when redis-server is not installed (see Binary).
func Start(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	return start(tb, newConfig(opts))
}

// newConfig applies opts.
func newConfig(opts []Option) config {
	var cfg config
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	return cfg
}

func start(tb testing.TB, cfg config) *Server {
	tb.Helper()
	s := &Server{bin: Binary(tb), dir: tb.TempDir(), cfg: cfg}
	// Registered after TempDir, so it runs before the directory is removed.
	tb.Cleanup(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if err := s.halt(os.Kill); err != nil {
			tb.Error(err)
		}
	})
	var err error
	for attempt := 1; attempt <= maxStartAttempts; attempt++ {
		port, perr := freePort(cfg.cluster)
		if perr != nil {
			tb.Fatal(perr)
		}
		s.port = port
		var inUse bool
		s.mu.Lock()
		inUse, err = s.launchAndWait()
		s.mu.Unlock()
		if err == nil {
			return s
		}
		if !inUse {
			break
		}
	}
	tb.Fatal(err)
	return nil
}

// Addr returns the server's address, "127.0.0.1:port".
func (s *Server) Addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
}

// URL returns the server's URL, "redis://127.0.0.1:port/0".
func (s *Server) URL() string {
	return "redis://" + s.Addr() + "/0"
}

// Dir returns the server's working directory, where its data and its log
// (redis.log) are.
func (s *Server) Dir() string {
	return s.dir
}

// Client returns a go-redis client to the server with default options,
// closed in tb's cleanup.
func (s *Server) Client(tb testing.TB) *redis.Client {
	tb.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr()})
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// Kill kills the server with SIGKILL, like a crash, and waits for the
// process to end. It does nothing if the server is not running.
func (s *Server) Kill(tb testing.TB) {
	tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.halt(os.Kill); err != nil {
		tb.Fatal(err)
	}
}

// Stop stops the server gracefully with SIGTERM and waits for the process
// to end (an append-only file is flushed; with the default --save "" no
// snapshot is written). It does nothing if the server is not running.
func (s *Server) Stop(tb testing.TB) {
	tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.halt(stopSignal); err != nil {
		tb.Fatal(err)
	}
}

// Restart starts the server again on the same port and in the same
// directory, so that an append-only file (WithAppendOnly) or a cluster
// node's configuration survives, and waits until it answers PING. If the
// port is briefly unavailable it retries for a few seconds. A server that is
// still running is first stopped as by Stop.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.halt(stopSignal); err != nil {
		tb.Fatal(err)
	}
	deadline := time.Now().Add(restartWindow)
	for {
		inUse, err := s.launchAndWait()
		if err == nil {
			return
		}
		if !inUse || time.Now().After(deadline) {
			tb.Fatalf("redistest: restart: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// args returns redis-server's command line.
func (s *Server) args() []string {
	args := []string{
		"--bind", "127.0.0.1",
		"--port", strconv.Itoa(s.port),
		"--save", "",
		"--appendonly", "no",
		"--protected-mode", "no",
		"--daemonize", "no",
		"--loglevel", "warning",
		"--dir", s.dir,
		"--logfile", filepath.Join(s.dir, logName),
	}
	if s.cfg.appendOnly {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	}
	if s.cfg.cluster {
		args = append(args,
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "2000",
			"--cluster-announce-ip", "127.0.0.1",
		)
	}
	return append(args, s.cfg.args...)
}

// launchAndWait starts redis-server and waits until it answers PING. On
// failure the process is gone, and inUse tells whether it failed because
// its port was taken. s.mu must be held.
func (s *Server) launchAndWait() (inUse bool, err error) {
	if err := s.launch(); err != nil {
		return false, err
	}
	err = s.waitReady()
	if err == nil {
		return false, nil
	}
	if herr := s.halt(os.Kill); herr != nil {
		err = fmt.Errorf("%v; %v", err, herr)
	}
	log := s.logSince(s.logOff)
	inUse = strings.Contains(log, "already in use") || strings.Contains(log, "Failed listening")
	return inUse, fmt.Errorf("%v%s", err, s.logTail())
}

// launch starts redis-server with its output appended to the log. s.mu
// must be held.
func (s *Server) launch() error {
	f, err := os.OpenFile(filepath.Join(s.dir, logName), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("redistest: open log: %w", err)
	}
	defer f.Close() // the child has its own copy
	off, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("redistest: open log: %w", err)
	}
	cmd := exec.Command(s.bin, s.args()...)
	cmd.Dir = s.dir
	cmd.Stdout = f
	cmd.Stderr = f
	p, err := startProcess(cmd)
	if err != nil {
		return fmt.Errorf("redistest: start %s: %w", s.bin, err)
	}
	s.proc, s.logOff = p, off
	return nil
}

// waitReady waits until the last run answers PING. s.mu must be held.
func (s *Server) waitReady() error {
	deadline := time.Now().Add(readyTimeout)
	for {
		if !s.proc.running() {
			return fmt.Errorf("redistest: redis-server on %s (pid %d) exited before answering PING: %s",
				s.Addr(), s.proc.pid(), s.proc.exitStatus())
		}
		err := ping(s.Addr())
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redistest: redis-server on %s (pid %d) did not answer PING within %v: %v",
				s.Addr(), s.proc.pid(), readyTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// halt sends sig to the running server, if any, and waits for it to end.
// If SIGTERM does not stop it in time it is killed. s.mu must be held.
func (s *Server) halt(sig os.Signal) error {
	p := s.proc
	if p == nil || !p.running() {
		return nil
	}
	p.signal(sig)
	if p.waitExit(exitTimeout) {
		return nil
	}
	if sig != os.Kill {
		p.signal(os.Kill)
		if p.waitExit(exitTimeout) {
			return fmt.Errorf("redistest: redis-server on %s (pid %d) did not exit within %v of %v; killed it",
				s.Addr(), p.pid(), exitTimeout, sig)
		}
	}
	return fmt.Errorf("redistest: redis-server on %s (pid %d) did not exit within %v of %v",
		s.Addr(), p.pid(), exitTimeout, os.Kill)
}

// logSince returns the log from offset off.
func (s *Server) logSince(off int64) string {
	f, err := os.Open(filepath.Join(s.dir, logName))
	if err != nil {
		return ""
	}
	defer f.Close()
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return ""
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// logTail returns the end of the last run's log, ready to append to an
// error.
func (s *Server) logTail() string {
	const maxLines, maxBytes = 20, 4096
	b := []byte(s.logSince(s.logOff))
	if len(b) > maxBytes {
		b = b[len(b)-maxBytes:]
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > maxLines {
		lines = lines[len(lines)-maxLines:]
	}
	tail := string(bytes.Join(lines, []byte("\n")))
	if strings.TrimSpace(tail) == "" {
		return fmt.Sprintf("\nredis-server log %s is empty", filepath.Join(s.dir, logName))
	}
	return fmt.Sprintf("\nredis-server log (%s), last lines:\n%s", filepath.Join(s.dir, logName), tail)
}
