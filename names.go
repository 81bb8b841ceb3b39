package wshub

import (
	"fmt"
	"strconv"
	"strings"
)

// newSessionID returns a cluster-unique ID that names this node.
func (h *Hub) newSessionID() string {
	return h.opts.NodeID + "." + strconv.FormatUint(h.seq.Add(1), 36) + randomSuffix()
}

// nodeOf returns the node ID inside a session ID.
func nodeOf(sessionID string) (string, bool) {
	i := strings.LastIndexByte(sessionID, '.')
	if i <= 0 || i == len(sessionID)-1 {
		return "", false
	}
	return sessionID[:i], true
}

func checkName(name string, sentinel error) error {
	if name == "" {
		return fmt.Errorf("%w: empty", sentinel)
	}
	if len(name) > MaxNameLength {
		return fmt.Errorf("%w: %d bytes, limit %d", sentinel, len(name), MaxNameLength)
	}
	return nil
}
