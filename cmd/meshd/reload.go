package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/meshd/meshd/server"
)

// settleTime is how long the config directory must be quiet after a change
// before the file is read: an editor or `kubectl` writes in several steps,
// and a half-written file would be rejected for nothing.
const settleTime = 100 * time.Millisecond

// reloadLoop reloads the config on SIGHUP and whenever the file's content
// changes. Changes are seen at once by watching the file's directory (and
// the directory its symlink resolves to): a Kubernetes ConfigMap update
// swaps a ..data symlink there rather than writing the file. Polling every
// `every` stays on as a safety net for file systems without change
// notification. Content, not mtime, is compared, so a rewrite with the same
// content is not a reload. A failed reload is logged (and counted by the
// server) and the old config keeps serving.
func reloadLoop(ctx context.Context, file string, every time.Duration, srv *server.Server, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	dirs := []string{filepath.Dir(file)}
	if real, err := filepath.EvalSymlinks(file); err == nil && filepath.Dir(real) != dirs[0] {
		dirs = append(dirs, filepath.Dir(real))
	}
	changed, stopWatch, err := watchDirs(dirs)
	if err != nil {
		log.Warn("cannot watch the config directory; polling it instead", "dirs", dirs, "every", every, "err", err)
	}
	defer stopWatch()

	last := fileHash(file)
	var tick <-chan time.Time
	if every > 0 {
		t := time.NewTicker(every)
		defer t.Stop()
		tick = t.C
	}
	var settle <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
			// Wait for the directory to be quiet; every event restarts
			// the wait.
			settle = time.After(settleTime)
			continue
		case <-hup:
			log.Info("SIGHUP: reloading config", "file", file)
		case <-settle:
			settle = nil
			if h := fileHash(file); h == nil || bytes.Equal(h, last) {
				continue
			}
			log.Info("config file changed: reloading", "file", file)
		case <-tick:
			if h := fileHash(file); h == nil || bytes.Equal(h, last) {
				continue
			}
			log.Info("config file changed: reloading", "file", file)
		}
		last = fileHash(file)
		if err := srv.ReloadFile(file); err != nil {
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
