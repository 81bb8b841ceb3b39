package redistest

import (
	"os"
	"os/exec"
	"sync"
	"time"
)

// process is one run of redis-server. It is watched without a goroutine
// where the platform allows (see process_unix.go), so that a running server
// adds no goroutine that a leak check could report.
type process struct {
	cmd *exec.Cmd
	id  int // the process id, kept because Release forgets it

	mu     sync.Mutex
	exited bool   // the process has ended and was reaped
	status string // how it ended, once exited
	plat   platformState
}

// pid returns the process id.
func (p *process) pid() int { return p.id }

// running reports whether the process is still running, reaping it if it
// has just ended.
func (p *process) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.pollLocked()
}

// exitStatus returns how the process ended, or "" while it runs.
func (p *process) exitStatus() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.status
}

// signal sends sig unless the process has already ended and been reaped
// (so a reused pid is never signalled).
func (p *process) signal(sig os.Signal) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pollLocked() {
		return
	}
	_ = p.cmd.Process.Signal(sig) // fails only if it has just exited
}

// waitExit waits up to timeout for the process to end and reaps it. It
// reports whether the process has ended.
func (p *process) waitExit(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if !p.running() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}
