package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/meshd/meshd/tap"
)

// Tapper is what GET /tap streams from (a *tap.Hub).
type Tapper interface {
	Subscribe(f tap.Filter) (*tap.Subscription, error)
}

// WithTap serves GET /tap from t.
func WithTap(t Tapper) Option { return func(s *Server) { s.tap = t } }

// tapDropInterval is how often a tap stream reports calls its buffer lost,
// when it lost some since the last report.
const tapDropInterval = time.Second

// TapDropped is the line a /tap stream sends, between calls, when calls
// were lost because the tapper read too slowly: the total lost so far.
type TapDropped struct {
	Dropped uint64 `json:"dropped"`
}

// tapStream serves GET /tap?route=&method=&code=&limit=&rate=: one JSON
// line (tap.Event) per finished call that matches, as calls end, until the
// client goes, limit lines were sent, or the admin server shuts down.
func (s *Server) tapStream(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := tap.Filter{Route: q.Get("route"), Method: q.Get("method")}
	if c := q.Get("code"); c != "" {
		code, err := tap.ParseCode(c)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		f.Code = &code
	}
	limit, err := intParam(q.Get("limit"))
	if err == nil {
		f.Rate, err = intParam(q.Get("rate"))
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	sub, err := s.tap.Subscribe(f)
	if errors.Is(err, tap.ErrTooMany) {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	} else if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer sub.Close()

	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	if rc.Flush() != nil {
		return
	}
	enc := json.NewEncoder(w)
	tick := time.NewTicker(tapDropInterval)
	defer tick.Stop()
	var sent int
	var reported uint64
	for limit == 0 || sent < limit {
		select {
		case ev := <-sub.Events():
			if enc.Encode(ev) != nil {
				return
			}
			sent++
			// Write what else is waiting before one flush.
			for more := true; more && (limit == 0 || sent < limit); {
				select {
				case ev := <-sub.Events():
					if enc.Encode(ev) != nil {
						return
					}
					sent++
				default:
					more = false
				}
			}
		case <-tick.C:
			d := sub.Dropped()
			if d == reported {
				continue
			}
			reported = d
			if enc.Encode(TapDropped{Dropped: d}) != nil {
				return
			}
		case <-r.Context().Done():
			return
		case <-s.stop:
			return
		}
		if rc.Flush() != nil {
			return
		}
	}
}

func intParam(v string) (int, error) {
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("admin: %q is not a count", v)
	}
	return n, nil
}
