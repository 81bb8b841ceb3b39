//go:build unix

package redistest

import (
	"fmt"
	"os/exec"
	"syscall"
)

// stopSignal asks redis-server to shut down gracefully.
var stopSignal = syscall.SIGTERM

// platformState is empty on unix: the process is reaped by polling wait4.
type platformState struct{}

// startProcess starts cmd. No goroutine watches it: pollLocked reaps it.
func startProcess(cmd *exec.Cmd) (*process, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &process{cmd: cmd, id: cmd.Process.Pid}, nil
}

// pollLocked reports whether the process has ended, reaping it without
// blocking if it has. p.mu must be held.
func (p *process) pollLocked() bool {
	if p.exited {
		return true
	}
	var ws syscall.WaitStatus
	pid, err := syscall.Wait4(p.pid(), &ws, syscall.WNOHANG, nil)
	switch {
	case err == syscall.EINTR:
		return false
	case err != nil: // ECHILD: nothing left to reap
		p.status = "wait: " + err.Error()
	case pid == p.pid():
		p.status = describeWaitStatus(ws)
	default: // still running
		return false
	}
	p.exited = true
	_ = p.cmd.Process.Release()
	return true
}

// describeWaitStatus says how a process ended.
func describeWaitStatus(ws syscall.WaitStatus) string {
	switch {
	case ws.Exited():
		return fmt.Sprintf("exit status %d", ws.ExitStatus())
	case ws.Signaled():
		return "killed by signal " + ws.Signal().String()
	default:
		return fmt.Sprintf("wait status %#x", uint32(ws))
	}
}
