package jwtauth

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"time"
)

// maxJWKSBytes bounds a JWKS read from a file or URL.
const maxJWKSBytes = 1 << 20

// nudgeMinInterval is how soon after a fetch an unknown kid may cause
// another: rotations are seen at once, a client inventing kids cannot make
// meshd hammer the identity provider.
const nudgeMinInterval = time.Second

// loadFile reads and parses a JWKS file.
func loadFile(path string) (*keySet, []byte, error) {
	data, err := readLimited(path)
	if err != nil {
		return nil, nil, err
	}
	ks, err := parseJWKS(data)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return ks, data, nil
}

func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxJWKSBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxJWKSBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxJWKSBytes)
	}
	return data, nil
}

// watchFile re-reads path every interval and swaps in its keys when its
// content changed and parses; a file that fails to read or parse keeps the
// last good keys (and is logged once per distinct failure). It returns
// when ctx is done.
func (p *Provider) watchFile(ctx context.Context, path string, last []byte, interval time.Duration, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	var lastErr string
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		data, err := readLimited(path)
		if err == nil && bytes.Equal(data, last) {
			continue
		}
		var ks *keySet
		if err == nil {
			ks, err = parseJWKS(data)
		}
		if err != nil {
			p.failures.Add(1)
			if msg := err.Error(); msg != lastErr {
				lastErr = msg
				log.Warn("jwks file unusable; keeping the last good keys", "file", path, "err", err)
			}
			continue
		}
		lastErr, last = "", data
		p.keys.Store(ks)
		log.Info("jwks file reloaded", "file", path, "keys", len(ks.byKID))
	}
}

// fetchLoop owns a jwks_url: it fetches at once, then every refresh; a
// failed fetch is retried with jittered exponential backoff (1s doubling,
// capped at refresh) while the last good keys keep serving. An unknown
// kid (nudge) brings the next fetch forward, at most once per
// nudgeMinInterval. It returns when ctx is done.
func (p *Provider) fetchLoop(ctx context.Context, url string, refresh time.Duration, client *http.Client, log *slog.Logger) {
	backoff := time.Duration(0)
	wait := time.Duration(0)
	for {
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			case <-p.refresh:
				t.Stop()
				since := time.Since(time.Unix(0, p.fetched.Load()))
				if since < nudgeMinInterval {
					wait = nudgeMinInterval - since
					continue
				}
			}
		}
		if ctx.Err() != nil {
			return
		}
		ks, err := fetch(ctx, client, url)
		p.fetched.Store(time.Now().UnixNano())
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			p.failures.Add(1)
			backoff = min(max(2*backoff, time.Second), refresh)
			wait = backoff/2 + rand.N(backoff/2+1)
			log.Warn("jwks fetch failed; keeping the last good keys", "url", url, "err", err, "retry_in", wait, "loaded", p.Loaded())
			continue
		}
		if p.keys.Swap(ks) == nil {
			log.Info("jwks loaded", "url", url, "keys", len(ks.byKID))
		}
		backoff, wait = 0, refresh
	}
}

func fetch(ctx context.Context, client *http.Client, url string) (*keySet, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxJWKSBytes {
		return nil, fmt.Errorf("GET %s: body larger than %d bytes", url, maxJWKSBytes)
	}
	return parseJWKS(data)
}
