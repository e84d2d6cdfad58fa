package engine

import "testing"

// TestBufPoolAcrossOwners: buffers move between the bufPools of a Server
// and a Pool with different MaxFrameSize; get always holds what it is asked
// for, and put never makes a pool hand out a buffer of the wrong class.
func TestBufPoolAcrossOwners(t *testing.T) {
	t.Parallel()
	small, big := newBufPool(DefaultMaxFrameSize), newBufPool(1<<16)
	for _, n := range []int{1, 1024, 1025, 16383, 16384, 16385, 60000, 1 << 16, 1<<24 - 1} {
		for _, p := range []*bufPool{&small, &big} {
			if b := p.get(n); len(*b) < n {
				t.Errorf("get(%d) = %d bytes", n, len(*b))
			}
		}
	}
	for i := 0; i < 100; i++ {
		small.put(big.get(1 << 16)) // not one of small's classes: dropped
		small.put(big.get(60000))
		big.put(small.get(16384)) // a class of both: kept
		for _, n := range []int{16384, 8192} {
			if b := small.get(n); len(*b) != n {
				t.Fatalf("small.get(%d) after foreign puts = %d bytes", n, len(*b))
			}
		}
		if b := big.get(16384); len(*b) != 16384 {
			t.Fatalf("big.get(16384) after foreign puts = %d bytes", len(*b))
		}
	}
}
