//go:build unix

package main

import (
	"fmt"
	"io"
	"syscall"
	"time"
)

// raiseNofile raises the soft limit of open files to the hard limit: every
// connection is a file descriptor, in both processes.
func raiseNofile(log io.Writer) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		fmt.Fprintln(log, "wshub-bench: getrlimit:", err)
		return
	}
	if rl.Cur == rl.Max {
		return
	}
	rl.Cur = rl.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		fmt.Fprintln(log, "wshub-bench: setrlimit:", err)
	}
}

// nofileLimit returns the soft limit of open files, or 0 if unknown.
func nofileLimit() uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0
	}
	return uint64(rl.Cur)
}

// cpuTime returns the CPU time (user and system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
