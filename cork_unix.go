//go:build unix

package wshub

import (
	"net"
	"syscall"
)

// rawSocket returns the descriptor of nc when it is a TCP socket, for
// corkConn.writeThrough, and nil otherwise.
func rawSocket(nc net.Conn) syscall.RawConn {
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// writeFD makes one write of p to the non-blocking descriptor fd (retried
// only when interrupted): it takes what the socket's buffer has room for.
func writeFD(fd uintptr, p []byte) (int, error) {
	for {
		n, err := syscall.Write(int(fd), p)
		if err != syscall.EINTR {
			return n, err
		}
	}
}
