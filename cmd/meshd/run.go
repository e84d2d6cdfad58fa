package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/server"
)

func cmdRun(args []string, stderr io.Writer) error {
	fs := newFlags("run", stderr)
	file := fs.String("config", "", "config file")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	watch := fs.Duration("watch-interval", time.Second, "how often to check the config file for changes (0: only SIGHUP)")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if *file == "" {
		return fmt.Errorf("meshd run: -config is required: %w", errUsage)
	}
	lvl, err := parseLevel(*level)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: lvl}))

	cfg, err := config.Load(*file)
	if err != nil {
		return fmt.Errorf("meshd: %w", err)
	}
	ctx, stop := signalContext()
	defer stop()

	srv, err := server.New(cfg, server.WithLogger(log))
	if err != nil {
		return fmt.Errorf("meshd: %w", err)
	}
	reloadCtx, stopReload := context.WithCancel(ctx)
	reloadDone := make(chan struct{})
	go func() {
		defer close(reloadDone)
		reloadLoop(reloadCtx, *file, *watch, srv, log)
	}()
	err = srv.Run(ctx)
	stopReload()
	<-reloadDone
	if err != nil {
		return fmt.Errorf("meshd: %w", err)
	}
	log.Info("meshd stopped")
	return nil
}

// reloadLoop reloads the config on SIGHUP and whenever the file's content
// changes. Content, not mtime, is compared: a Kubernetes ConfigMap update
// swaps a ..data symlink, and editors may rewrite a file without changing
// it. A failed reload is logged and the old config keeps serving.
func reloadLoop(ctx context.Context, file string, every time.Duration, srv *server.Server, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	last := fileHash(file)
	var tick <-chan time.Time
	if every > 0 {
		t := time.NewTicker(every)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			log.Info("SIGHUP: reloading config", "file", file)
		case <-tick:
			h := fileHash(file)
			if h == nil || bytes.Equal(h, last) {
				continue
			}
			log.Info("config file changed: reloading", "file", file)
		}
		last = fileHash(file)
		cfg, err := config.Load(file)
		if err == nil {
			err = srv.Reload(cfg)
		}
		if err != nil {
			log.Error("config reload rejected; the previous config keeps serving", "file", file, "err", err)
		}
	}
}

func fileHash(file string) []byte {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil
	}
	h := sha256.Sum256(data)
	return h[:]
}
