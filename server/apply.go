package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/consul/api"

	"github.com/meshd/meshd/config"
)

// The apply loop. Config comes from two sources: the file (start, a file
// change, SIGHUP: Reload, ReloadFile) and the consul.config_key watch
// (kv.go). Each hands a whole snapshot of its part to one goroutine, the
// apply loop, which joins it with the other source's part in force,
// builds and validates everything, warms new clusters and swaps the
// result in (Traefik's Provide(configurationChan) shape). The loop owns
// what a reload reads and writes: fileCfg, kvData, buckets and oldStates
// are touched by no other goroutine, so no lock guards them. Snapshots
// are applied one at a time, in the order they arrive; the sender waits
// for the outcome.
//
// The loop is started by New and stopped by closeAll (it exits when the
// Server stops; a snapshot whose warm-up is under way returns as soon as
// warm sees the stop).

// snapshot is one source's new state for the apply loop: a file config,
// a file that failed to load, or a value of the Consul key.
type snapshot struct {
	file    *config.Config
	loadErr error
	kv      *kvSnapshot
	// kubeRules is a new GRPCRoute translation (kube.go).
	kubeRules *kubeSnapshot
	done      chan error // buffered: the loop never blocks on a sender
}

// kvSnapshot is a new answer of the consul.config_key watch w (pair nil:
// the key is absent).
type kvSnapshot struct {
	w    *kvWatch
	pair *api.KVPair
}

var errStopping = errors.New("server: stopping")

// startApplyLoop starts the loop; closeAll stops it (s.stopping) and
// waits for it (s.wg).
func (s *Server) startApplyLoop() {
	s.snapshots = make(chan snapshot)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			select {
			case <-s.stopping:
				return
			case sn := <-s.snapshots:
				sn.done <- s.applySnapshot(sn)
			}
		}
	}()
}

// submit hands sn to the apply loop and waits for its outcome, until ctx
// ends or the Server stops.
func (s *Server) submit(ctx context.Context, sn snapshot) error {
	sn.done = make(chan error, 1)
	select {
	case s.snapshots <- sn:
	case <-s.stopping:
		return errStopping
	case <-ctx.Done():
		return ctx.Err()
	}
	// Once taken, a snapshot is always answered: the loop finishes it
	// (warm-up gives up early when the Server stops).
	return <-sn.done
}

// applySnapshot runs on the apply loop.
func (s *Server) applySnapshot(sn snapshot) error {
	switch {
	case sn.loadErr != nil:
		return s.count(fmt.Errorf("server: %w", sn.loadErr))
	case sn.file != nil:
		return s.count(s.reloadFile(sn.file))
	case sn.kv != nil:
		return s.applyKV(sn.kv.w, sn.kv.pair)
	case sn.kubeRules != nil:
		return s.applyKube(sn.kubeRules)
	}
	return nil
}
