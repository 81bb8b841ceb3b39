package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"time"
)

// exit is os.Exit; the client process's watchdog calls it.
var exit = os.Exit

// childProc is the parent's handle on the client process.
type childProc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	enc    *json.Encoder
	dec    *json.Decoder
	exited bool
}

// startChild re-executes this binary with "-role clients" (os.Executable,
// which is os.Args[0] resolved; under go test, the test binary). The process is
// killed when ctx ends; it also exits by itself after timeout, and when its
// stdin is closed. Its stderr is ours.
func startChild(ctx context.Context, timeout time.Duration, cpuProfile string, stderr io.Writer) (*childProc, error) {
	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	args := []string{"-role", "clients", "-timeout", timeout.String()}
	if cpuProfile != "" {
		args = append(args, "-cpuprofile", cpuProfile)
	}
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.Stderr = stderr
	cmd.WaitDelay = 5 * time.Second
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start client process: %w", err)
	}
	return &childProc{
		cmd:   cmd,
		stdin: stdin,
		enc:   json.NewEncoder(stdin),
		dec:   json.NewDecoder(bufio.NewReader(stdout)),
	}, nil
}

// call sends one request and waits for its reply. It cannot hang past the
// parent's deadline: the process is killed then, which ends the read.
func (c *childProc) call(r request) (reply, error) {
	var rep reply
	if c.exited {
		return rep, errors.New("client process: already stopped")
	}
	if err := c.enc.Encode(r); err != nil {
		return rep, fmt.Errorf("client process: send %s: %w", r.Op, err)
	}
	if err := c.dec.Decode(&rep); err != nil {
		return rep, fmt.Errorf("client process: reply to %s: %w", r.Op, err)
	}
	if rep.Err != "" {
		return rep, fmt.Errorf("client process: %s", rep.Err)
	}
	return rep, nil
}

// stop asks the client process to close its connections and exit, and waits
// for it. It is safe to call twice.
func (c *childProc) stop() error {
	if c.exited {
		return nil
	}
	_, err := c.call(request{Op: opClose})
	c.exited = true
	_ = c.stdin.Close()
	if werr := c.cmd.Wait(); werr != nil && err == nil {
		err = fmt.Errorf("client process: %w", werr)
	}
	return err
}
