//go:build !unix

package redistest

import (
	"os"
	"os/exec"
)

// stopSignal is os.Kill where SIGTERM cannot be sent.
var stopSignal = os.Kill

// platformState holds the channel closed by the goroutine that waits for
// the process, which ends when the process does.
type platformState struct {
	done chan struct{}
}

// startProcess starts cmd and a goroutine that waits for it.
func startProcess(cmd *exec.Cmd) (*process, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, id: cmd.Process.Pid, plat: platformState{done: make(chan struct{})}}
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.status = "exited"
		if err != nil {
			p.status = err.Error()
		}
		p.mu.Unlock()
		close(p.plat.done)
	}()
	return p, nil
}

// pollLocked reports whether the process has ended. p.mu must be held.
func (p *process) pollLocked() bool {
	if p.exited {
		return true
	}
	select {
	case <-p.plat.done:
		p.exited = true
		return true
	default:
		return false
	}
}
