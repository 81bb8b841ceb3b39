//go:build !linux

package main

import "syscall"

// bindAddressNoPort is only needed, and only exists, on Linux.
var bindAddressNoPort func(network, address string, c syscall.RawConn) error

// writeCalls is only counted on Linux.
func writeCalls() int64 { return 0 }
