package main

import (
	"fmt"
	"io"
	"log/slog"
)

// Log formats of `meshd run -log-format`.
const (
	logFormatJSON = "json" // one JSON object per line, for collectors (default)
	logFormatText = "text" // slog's key=value lines, for people at a terminal
)

// newLogger returns the logger `meshd run` writes to w: slog's JSON or text
// handler at level, with durations written as Go durations ("10s") in both.
// slog's JSON handler writes a time.Duration as int64 nanoseconds
// (10000000000), which neither a person nor a dashboard query reads as
// time; its text handler already uses String, so the two agree now.
//
// Each key appears once per line because of who adds it, not because of
// the handler: a package narrows the logger it is given with its own
// component and the keys only it knows (balancer: cluster; discovery:
// service; identity: kind, service), and its caller adds only what the
// package cannot know (engine: listener or cluster). slog.Logger.With
// appends and never replaces, so a key added on both sides would be
// written twice.
func newLogger(w io.Writer, format string, level slog.Level) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: durationString}
	switch format {
	case logFormatJSON:
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case logFormatText:
		return slog.New(slog.NewTextHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("meshd: bad -log-format %q (want text or json): %w", format, errUsage)
	}
}

// durationString is a slog ReplaceAttr that writes a time.Duration with its
// String method, at any depth of groups.
func durationString(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}
