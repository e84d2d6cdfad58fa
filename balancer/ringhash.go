package balancer

import (
	"cmp"
	"slices"
	"strconv"

	"github.com/cespare/xxhash/v2"
)

// ringHash is the ring_hash policy: a ketama-style consistent-hash ring.
// Each endpoint owns virtual nodes at xxhash("<id>_<n>") for n in
// [0, k·weight); a call goes to the first virtual node at or after
// xxhash(key).
//
// k, the virtual nodes per unit of weight, is a fixed option: it must not
// depend on how many endpoints exist or in which order health checks
// admitted them. Then an endpoint's nodes are a function of its ID and
// weight alone, so every meshd in front of the same endpoints builds the
// same ring, an endpoint leaving moves only the keys on its nodes, and one
// joining takes only the keys its nodes cover. (An earlier version sized k
// from the first build's endpoints; a cluster whose endpoints were admitted
// one by one then disagreed with a fresh one on most keys.)
type ringHash struct {
	rand      func() uint64
	perWeight uint64 // k
}

// maxRingEntries bounds a ring built from very large weights; past it the
// nodes are scaled down (at least one per endpoint) at some cost in
// consistency.
const maxRingEntries = 1 << 22

var _ policy = (*ringHash)(nil)

// ringEntry is one virtual node.
type ringEntry struct {
	hash  uint64
	index int32 // into ringPicker.eps
}

func (p *ringHash) build(eps []*Endpoint) picker {
	var sum uint64
	for _, e := range eps {
		sum += uint64(weightOf(e))
	}
	count := func(w uint64) uint64 { return p.perWeight * w }
	if total := p.perWeight * sum; total > maxRingEntries {
		count = func(w uint64) uint64 { return max(1, w*maxRingEntries/sum) }
	}
	ring := make([]ringEntry, 0, min(p.perWeight*sum, maxRingEntries+uint64(len(eps))))
	var buf []byte
	for i, e := range eps {
		for n := range count(uint64(weightOf(e))) {
			buf = append(buf[:0], e.id...)
			buf = append(buf, '_')
			buf = strconv.AppendUint(buf, n, 10)
			ring = append(ring, ringEntry{hash: xxhash.Sum64(buf), index: int32(i)})
		}
	}
	slices.SortFunc(ring, func(a, b ringEntry) int {
		if c := cmp.Compare(a.hash, b.hash); c != 0 {
			return c
		}
		// Equal hashes (astronomically rare) still need a fixed order so
		// that every meshd builds the same ring.
		return cmp.Compare(eps[a.index].id, eps[b.index].id)
	})
	return &ringPicker{eps: eps, ring: ring, rand: p.rand}
}

type ringPicker struct {
	eps  []*Endpoint
	ring []ringEntry
	rand func() uint64
}

var _ picker = (*ringPicker)(nil)

func (p *ringPicker) pick(r pickRequest) *Endpoint {
	if !r.hasKey {
		e := p.eps[one(p.rand(), len(p.eps))]
		if e == r.exclude && len(p.eps) > 1 {
			e = p.eps[(indexOf(p.eps, e)+1)%len(p.eps)]
		}
		return e
	}
	i := p.search(xxhash.Sum64String(r.key))
	e := p.eps[p.ring[i].index]
	if e == r.exclude && len(p.eps) > 1 {
		// Walk on to the next distinct endpoint, as a retry under ketama
		// does: deterministic for the key, and it stays near the key's
		// home on the ring.
		for k := 1; k < len(p.ring); k++ {
			if x := p.eps[p.ring[(i+k)%len(p.ring)].index]; x != e {
				return x
			}
		}
	}
	return e
}

// search returns the index of the first virtual node with hash >= h,
// wrapping to 0 past the end.
func (p *ringPicker) search(h uint64) int {
	lo, hi := 0, len(p.ring)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if p.ring[m].hash < h {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo == len(p.ring) {
		return 0
	}
	return lo
}
