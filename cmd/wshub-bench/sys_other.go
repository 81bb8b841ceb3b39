//go:build !unix

package main

import (
	"io"
	"time"
)

func raiseNofile(io.Writer) {}

func nofileLimit() uint64 { return 0 }

func cpuTime() time.Duration { return 0 }
