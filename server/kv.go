package server

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshd/meshd/config"
)

// kvWatch is the blocking-query watch of consul.config_key: routes and
// clusters a fleet shares. Each change goes through the same path as a
// file reload (merge with the file, validate everything, warm, swap), so a
// bad value is rejected and counted exactly like a bad file.
type kvWatch struct {
	key    string
	client *api.Client
	cancel context.CancelFunc
	first  chan struct{} // closed after the first answer from Consul
	once   sync.Once

	mu     sync.Mutex
	status KVStatus
}

// KVStatus is the state of the consul.config_key watch, in /config_dump.
type KVStatus struct {
	// Key is the watched key.
	Key string `json:"key"`
	// Index is Consul's index of the last answer.
	Index uint64 `json:"index"`
	// AppliedIndex is the ModifyIndex of the value in force (0: none).
	AppliedIndex uint64 `json:"applied_index"`
	// Present says whether the key existed at the last answer.
	Present bool `json:"present"`
	// LastError is why the last value was rejected or the last query
	// failed ("" after a success).
	LastError string `json:"last_error,omitempty"`
	// LastApplied is when a value was last applied.
	LastApplied time.Time `json:"last_applied,omitzero"`
}

func (w *kvWatch) update(f func(*KVStatus)) {
	w.mu.Lock()
	f(&w.status)
	w.mu.Unlock()
}

// Status returns a copy of the watch's status.
func (w *kvWatch) Status() KVStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.status
}

// kvFor returns the Consul rules to join to cfg: those in force, if cfg
// still names their key. It runs on the apply loop.
func (s *Server) kvFor(cfg *config.Config) (source string, data []byte) {
	s.mu.Lock()
	w := s.kv
	s.mu.Unlock()
	if w == nil || w.key != cfg.Consul.ConfigKey || s.kvData == nil {
		return "", nil
	}
	return kvSource(w.key), s.kvData
}

func kvSource(key string) string { return "consul:" + key }

// syncKV starts, stops or restarts the watch to match cfg (after a
// successful apply, so s.consul is cfg's client). It runs on the apply
// loop. An old watch is cancelled, not waited for: it may be waiting for
// the apply loop itself; it exits by itself and closeAll waits for it.
func (s *Server) syncKV(cfg *config.Config) {
	key := cfg.Consul.ConfigKey
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.kv
	if cur != nil && cur.key == key && cur.client == s.consul {
		return
	}
	if cur != nil {
		cur.cancel()
		s.kv = nil
		if cur.key != key {
			s.kvData = nil
		}
	}
	if key == "" {
		s.kvData = nil
		return
	}
	select {
	case <-s.stopping:
		return
	default:
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &kvWatch{key: key, client: s.consul, cancel: cancel, first: make(chan struct{}), status: KVStatus{Key: key}}
	s.kv = w
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.watchKV(ctx, w)
	}()
}

// Backoff after a failed KV query.
const (
	kvBackoffMin = 100 * time.Millisecond
	kvBackoffMax = 5 * time.Second
)

// watchKV runs blocking queries on the key until ctx ends, like
// discovery's service watch: WaitIndex = LastIndex, reset when the index
// goes backwards, back off on errors, skip unchanged answers.
func (s *Server) watchKV(ctx context.Context, w *kvWatch) {
	log := s.log.With("component", "consul-config", "key", w.key)
	var index, lastMod uint64
	seen, lastPresent := false, false
	backoff := kvBackoffMin
	for {
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: 5 * time.Minute}).WithContext(ctx)
		pair, meta, err := w.client.KV().Get(w.key, q)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			w.update(func(st *KVStatus) { st.LastError = err.Error() })
			log.Warn("consul config key query failed", "err", err, "retry_in", backoff)
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			backoff = min(2*backoff, kvBackoffMax)
			continue
		}
		backoff = kvBackoffMin
		// Consul: an index that goes backwards means a reset; start over.
		// Never block on index 0, which returns at once.
		if meta.LastIndex < index {
			index = 0
		} else {
			index = meta.LastIndex
		}
		index = max(index, 1)
		present := pair != nil
		var mod uint64
		if present {
			mod = pair.ModifyIndex
		}
		w.update(func(st *KVStatus) { st.Index, st.Present = meta.LastIndex, present })
		if !seen || present != lastPresent || mod != lastMod {
			seen, lastPresent, lastMod = true, present, mod
			// The loop logs and counts the outcome; a cancelled
			// watch stops here.
			_ = s.submit(ctx, snapshot{kv: &kvSnapshot{w: w, pair: pair}})
		}
		w.once.Do(func() { close(w.first) })
	}
}

// applyKV applies one new value of the key through the reload path, on
// the apply loop. It logs the outcome (it is the loop's owner of it) and
// returns it.
func (s *Server) applyKV(w *kvWatch, pair *api.KVPair) error {
	log := s.log.With("component", "consul-config", "key", w.key)
	s.mu.Lock()
	current := s.kv == w
	s.mu.Unlock()
	if !current {
		return nil // replaced by a reload that changed the key or the agent
	}
	if pair == nil {
		if s.kvData != nil {
			log.Warn("consul config key deleted; the last good rules keep serving (set it to an empty document to clear them)")
		}
		return nil
	}
	if s.kvData != nil && bytes.Equal(s.kvData, pair.Value) {
		w.update(func(st *KVStatus) { st.AppliedIndex, st.LastError = pair.ModifyIndex, "" })
		return nil
	}
	src := kvSource(w.key)
	f, err := config.ParseFragment(pair.Value, src)
	if err == nil {
		var merged *config.Config
		if merged, err = config.Merge(s.fileCfg, f); err == nil {
			// The GRPCRoutes' rules in force go first; those that no
			// longer validate with the new key are left out.
			if merged, _, err = withKube(merged, s.kubeRules); err == nil {
				err = s.apply(merged)
			}
		}
	}
	if err != nil {
		err = fmt.Errorf("server: rules from %s (index %d) rejected: %w", src, pair.ModifyIndex, err)
	}
	if s.count(err) != nil {
		msg := err.Error()
		w.update(func(st *KVStatus) { st.LastError = msg })
		log.Error("consul config rejected; the last good rules keep serving", "index", pair.ModifyIndex, "err", err)
		return err
	}
	s.kvData = bytes.Clone(pair.Value)
	w.update(func(st *KVStatus) { st.AppliedIndex, st.LastError, st.LastApplied = pair.ModifyIndex, "", time.Now() })
	log.Info("consul config applied", "index", pair.ModifyIndex)
	return nil
}

// kvReady reports why the server is not ready as far as the KV watch goes:
// with a config_key, the first answer from Consul must have been handled,
// so that a fresh instance does not take traffic without its fleet's
// routes.
func (s *Server) kvReady() error {
	s.mu.Lock()
	w := s.kv
	s.mu.Unlock()
	if w == nil {
		return nil
	}
	select {
	case <-w.first:
		return nil
	default:
		if e := w.Status().LastError; e != "" {
			return fmt.Errorf("waiting for consul config key %q: %s", w.key, e)
		}
		return fmt.Errorf("waiting for consul config key %q", w.key)
	}
}

// kvStatus returns the KV watch's status, or nil without one.
func (s *Server) kvStatus() *KVStatus {
	s.mu.Lock()
	w := s.kv
	s.mu.Unlock()
	if w == nil {
		return nil
	}
	st := w.Status()
	return &st
}
