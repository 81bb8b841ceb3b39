// Command streamer is the rooms example's third service: it generates a
// live binary stream (frames of a moving pattern) and sends it over TCP to
// the ingest port of a rooms instance, which broadcasts every frame to the
// room's viewers on all instances. When the connection fails it moves to
// the next address of -ingest and carries on.
//
//	go run ./examples/rooms/streamer -ingest 127.0.0.1:9001,127.0.0.1:9002
//
// The flags are:
//
//	-ingest ADDRS  comma-separated ingest addresses, tried in turn (default 127.0.0.1:9000)
//	-room NAME     room to stream into (default demo)
//	-fps N         frames a second (default 20)
//	-size WxH      frame size in pixels, at most 128x96 (default 80x60)
//	-frames N      stop after N frames (default 0: until interrupted)
//
// The protocol (package examples/rooms/internal/stream) is records of a
// 4-byte big-endian length and that many bytes: the room's name, then one
// frame per record. Any language can speak it; the streamer needs neither
// wshub nor access to the backplane.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/wshub/wshub/examples/rooms/internal/stream"
)

func main() {
	ingest := flag.String("ingest", "127.0.0.1:9000", "comma-separated ingest `addresses`, tried in turn")
	room := flag.String("room", "demo", "`room` to stream into")
	fps := flag.Int("fps", stream.DefaultFPS, "frames a second")
	size := flag.String("size", fmt.Sprintf("%dx%d", stream.DefaultWidth, stream.DefaultHeight), "frame size `WxH` in pixels")
	frames := flag.Int("frames", 0, "stop after `N` frames (0: until interrupted)")
	flag.Parse()
	var w, h int
	if _, err := fmt.Sscanf(*size, "%dx%d", &w, &h); err != nil || w <= 0 || h <= 0 || w > 0xffff || h > 0xffff {
		fmt.Fprintf(os.Stderr, "streamer: bad -size %q\n", *size)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	s := &stream.Streamer{
		Addrs:  strings.Split(*ingest, ","),
		Room:   *room,
		FPS:    *fps,
		Width:  w,
		Height: h,
		Frames: *frames,
		Logger: slog.New(slog.NewTextHandler(os.Stdout, nil)),
	}
	if err := s.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "streamer:", err)
		stop()
		os.Exit(1)
	}
}
