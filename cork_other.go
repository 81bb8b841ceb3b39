//go:build !unix

package wshub

import (
	"errors"
	"net"
	"syscall"
)

// rawSocket returns nil: writing to a descriptor directly is only done on
// Unix, and corkConn.writeThrough does not try elsewhere.
func rawSocket(net.Conn) syscall.RawConn { return nil }

func writeFD(uintptr, []byte) (int, error) { return 0, errors.New("wshub: not supported") }
