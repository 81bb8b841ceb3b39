package main

import (
	"bytes"
	"os"
	"strconv"
	"syscall"
)

// ipBindAddressNoPort is IP_BIND_ADDRESS_NO_PORT (Linux 4.2), which the
// syscall package does not name.
const ipBindAddressNoPort = 24

// bindAddressNoPort makes a socket's bind to a source address leave the port
// to connect, which picks one that makes the 4-tuple unique and may reuse a
// port in TIME_WAIT. A plain bind with port 0 needs a port no other socket
// of that address holds, TIME_WAIT included: after one large run, the next
// one's binds fail or crawl for a minute.
func bindAddressNoPort(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
	}); err != nil {
		return err
	}
	return serr
}

// writeCalls returns how many write system calls (write, writev, send and
// the like) this process has made, from /proc/self/io; 0 if unreadable.
func writeCalls() int64 {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte("syscw: ")); ok {
			n, _ := strconv.ParseInt(string(v), 10, 64)
			return n
		}
	}
	return 0
}
