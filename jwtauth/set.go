package jwtauth

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"sync"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/meshd/meshd/config"
)

// Set holds the providers of one configuration. New loads every jwks_file
// (an unusable one is an error: the config is refused); Start runs the
// goroutines that keep keys fresh, Stop ends them and waits. Verify and
// Ready are safe for concurrent use.
type Set struct {
	providers map[string]*Provider
	log       *slog.Logger

	start  func(ctx context.Context, wg *sync.WaitGroup) // the sources' loops
	mu     sync.Mutex
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Option configures New.
type Option func(*options)

type options struct {
	log          *slog.Logger
	now          func() time.Time
	client       *http.Client
	fileInterval time.Duration
}

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithClock sets the clock tokens are checked against (default time.Now).
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithHTTPClient sets the client jwks_url is fetched with (default: a
// client with a 10s timeout).
func WithHTTPClient(c *http.Client) Option { return func(o *options) { o.client = c } }

// WithFilePollInterval sets how often jwks_file is checked for changes
// (default 1s).
func WithFilePollInterval(d time.Duration) Option { return func(o *options) { o.fileInterval = d } }

// New builds the providers of cfgs (validated), reading every jwks_file.
func New(cfgs []config.JWTProvider, opts ...Option) (*Set, error) {
	o := options{log: slog.New(slog.DiscardHandler), now: time.Now, fileInterval: time.Second}
	for _, opt := range opts {
		opt(&o)
	}
	if o.client == nil {
		o.client = &http.Client{Timeout: 10 * time.Second}
	}
	s := &Set{providers: map[string]*Provider{}, log: o.log}
	var loops []func(ctx context.Context)
	for _, c := range cfgs {
		p := newProvider(c, o.now)
		log := o.log.With("component", "jwtauth", "provider", c.Name)
		switch {
		case c.JWKSFile != "":
			ks, data, err := loadFile(c.JWKSFile)
			if err != nil {
				return nil, fmt.Errorf("jwtauth: provider %q: %w", c.Name, err)
			}
			p.keys.Store(ks)
			path := c.JWKSFile
			loops = append(loops, func(ctx context.Context) { p.watchFile(ctx, path, data, o.fileInterval, log) })
		case c.JWKSURL != "":
			p.refresh = make(chan struct{}, 1)
			url, refresh := c.JWKSURL, c.JWKSRefresh.D()
			if refresh <= 0 {
				refresh = config.DefaultJWKSRefresh
			}
			loops = append(loops, func(ctx context.Context) { p.fetchLoop(ctx, url, refresh, o.client, log) })
		}
		s.providers[c.Name] = p
	}
	s.start = func(ctx context.Context, wg *sync.WaitGroup) {
		for _, l := range loops {
			wg.Add(1)
			go func() { defer wg.Done(); l(ctx) }()
		}
	}
	return s, nil
}

// Start runs the key sources until Stop. Calling it twice does nothing.
func (s *Set) Start() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.start(ctx, &s.wg)
}

// Stop ends the key sources and waits for them. The providers keep their
// last keys, so calls still verifying against them are unaffected.
func (s *Set) Stop() {
	if s == nil {
		return
	}
	s.mu.Lock()
	cancel := s.cancel
	s.cancel = func() {} // a later Start is a no-op
	s.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	s.wg.Wait()
}

// Verify checks the call's token against provider name (see
// Provider.Verify).
func (s *Set) Verify(name string, h Headers) ([]hpack.HeaderField, error) {
	p := s.providers[name]
	if p == nil {
		// Validation makes this impossible; refuse rather than let the
		// call through.
		return nil, &Denial{Provider: name, Reason: ReasonUnknownSource, Msg: "unknown provider"}
	}
	return p.Verify(h)
}

// Provider returns the provider called name, or nil.
func (s *Set) Provider(name string) *Provider { return s.providers[name] }

// Ready reports the first provider (by name) without keys yet.
func (s *Set) Ready() error {
	if s == nil {
		return nil
	}
	names := make([]string, 0, len(s.providers))
	for n := range s.providers {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if !s.providers[n].Loaded() {
			return fmt.Errorf("jwt provider %q: jwks not loaded yet", n)
		}
	}
	return nil
}
