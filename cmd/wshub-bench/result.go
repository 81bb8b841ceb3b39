package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/url"
)

// result is the JSON line of a run.
type result struct {
	Scenario           string  `json:"scenario"`
	Backplane          string  `json:"backplane"`
	Nodes              int     `json:"nodes"`
	Conns              int     `json:"conns"`
	Msgs               int     `json:"msgs"`
	Size               int     `json:"size"`
	Rate               float64 `json:"rate"`
	Batch              bool    `json:"batch"`
	Delivered          int64   `json:"delivered"`
	Lost               int64   `json:"lost"`
	DeliveriesPerS     float64 `json:"deliveries_per_s"`
	P50Ms              float64 `json:"p50_ms"`
	P99Ms              float64 `json:"p99_ms"`
	MaxMs              float64 `json:"max_ms"`
	ServerBytesPerConn int64   `json:"server_bytes_per_conn"`
	GoroutinesPerConn  float64 `json:"goroutines_per_conn"`
	// Presence holds the presence scenario's figures; other scenarios
	// leave it out.
	Presence *presenceFigures `json:"presence,omitempty"`
	// The traffic phase's CPU: the server process's, the client
	// process's and, with a Redis backplane, the Redis server's (INFO
	// cpu, main and child threads), in seconds; and deliveries per
	// second of server CPU.
	ServerCPUS        float64 `json:"server_cpu_s"`
	ClientCPUS        float64 `json:"client_cpu_s"`
	RedisCPUS         float64 `json:"redis_cpu_s"`
	DeliveriesPerCPUS float64 `json:"deliveries_per_server_cpu_s"`
	// ServerWrites is the server process's write system calls in the
	// traffic phase (Linux; 0 elsewhere): deliveries over it is how many
	// messages a write carries.
	ServerWrites int64 `json:"server_writes"`
}

// newResult returns the line's description of the run as cfg asks for it.
// A scenario corrects what it does otherwise: idle sends nothing, raw has
// no hub.
func newResult(cfg config) result {
	return result{
		Scenario:  cfg.scenario,
		Backplane: redactURL(cfg.backplane),
		Nodes:     cfg.nodes,
		Conns:     cfg.conns,
		Msgs:      cfg.msgs,
		Size:      cfg.size,
		Batch:     cfg.batch,
		Rate:      cfg.rate,
	}
}

// writeLine writes res as one JSON line.
func writeLine(w io.Writer, res result) error {
	line, err := json.Marshal(res)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", line)
	return err
}

func ms(ns int64) float64 { return round(float64(ns)/1e6, 3) }

func round(v float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(v*p) / p
}

// redactURL hides a password in a backplane URL.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable url)"
	}
	if _, has := u.User.Password(); !has {
		return s
	}
	return u.Redacted()
}
