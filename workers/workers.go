package workers

import (
	"context"
	"log/slog"
	"runtime"
	"sync"
	"time"
)

// Auto is the Set value that lets the controller choose the count.
const Auto = 0

// Interval is how often the controller samples the load.
const Interval = time.Second

const (
	// growBusy: the workers are saturated when the process used at
	// least this share of them over an interval.
	growBusy = 0.85
	// growIdle: another worker only helps when the machine had at
	// least this much of a CPU idle over the interval.
	growIdle = 0.5
	// growAfter intervals in a row of saturation add a worker.
	growAfter = 2
	// shrinkBusy: the load fits in one fewer worker when it used at
	// most this share of them.
	shrinkBusy = 0.6
	// shrinkAfter intervals in a row of a load that fits remove one:
	// longer than growing, so a burst's gaps do not give workers back.
	shrinkAfter = 5
)

// Sample is the CPU time used up to a moment: by this process and, where
// the machine's counters can be read, left idle on the machine (summed
// over its CPUs).
type Sample struct {
	At      time.Time
	Process time.Duration
	Idle    time.Duration
	HasIdle bool // Idle was read
}

// Controller owns GOMAXPROCS. Its loop (Run) is the only writer; Set is
// how the config reaches it.
type Controller struct {
	max      int
	interval time.Duration
	sample   func() (Sample, error)
	apply    func(int)
	log      *slog.Logger

	mu    sync.Mutex
	want  int // Auto or a fixed count
	cur   int
	state decider
	kick  chan struct{}
}

// Option configures a Controller.
type Option func(*Controller)

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(c *Controller) { c.log = l } }

// New returns a controller that may use up to the runtime's GOMAXPROCS at
// the time of the call: the CPUs the process may run on, or its cgroup's
// CPU limit, or the GOMAXPROCS environment variable. It changes nothing
// until Run.
func New(opts ...Option) *Controller {
	c := &Controller{
		max:      runtime.GOMAXPROCS(0),
		interval: Interval,
		sample:   ReadSample,
		apply:    func(n int) { runtime.GOMAXPROCS(n) },
		log:      slog.Default(),
		kick:     make(chan struct{}, 1),
	}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Max is the most workers the controller uses.
func (c *Controller) Max() int { return c.max }

// Set asks for n workers, or Auto. A fixed n above Max is used as given:
// an operator who asks for more threads than CPUs gets them.
func (c *Controller) Set(n int) {
	c.mu.Lock()
	c.want = n
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// Run applies the count asked for and, in Auto, adapts it to the load
// every Interval, until ctx is done. Auto starts with one worker. The
// count in use when Run returns stays.
func (c *Controller) Run(ctx context.Context) {
	t := time.NewTicker(c.interval)
	defer t.Stop()
	prev, err := c.sample()
	if err != nil {
		c.log.Warn("workers: cannot read CPU usage; auto keeps one worker", "err", err)
	}
	c.update(prev, Sample{}, false)
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.kick:
			c.update(prev, Sample{}, false)
		case <-t.C:
			s, err := c.sample()
			if err != nil {
				continue
			}
			c.update(prev, s, true)
			prev = s
		}
	}
}

// update applies the wanted count; with a new sample and Auto, it feeds the
// decider the interval's load first.
func (c *Controller) update(prev, s Sample, measured bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.want
	if n == Auto {
		// From the count in use: a switch from a fixed count under load
		// gives workers back one at a time, as the load allows.
		n = max(c.cur, 1)
		if measured {
			n = c.state.next(n, c.max, loadOf(prev, s))
		}
	} else {
		c.state = decider{}
	}
	if n != c.cur {
		c.apply(n)
		c.log.Debug("workers: GOMAXPROCS changed", "from", c.cur, "to", n, "auto", c.want == Auto)
		c.cur = n
	}
}

// load is one interval's CPU use, in CPUs.
type load struct {
	busy    float64 // used by the process
	idle    float64 // left idle on the machine
	hasIdle bool
}

func loadOf(prev, s Sample) load {
	wall := s.At.Sub(prev.At).Seconds()
	if wall <= 0 {
		return load{}
	}
	l := load{busy: (s.Process - prev.Process).Seconds() / wall}
	if s.HasIdle && prev.HasIdle {
		l.idle, l.hasIdle = (s.Idle-prev.Idle).Seconds()/wall, true
	}
	return l
}

// decider is Auto's hysteresis: counts of consecutive intervals that asked
// for one more and one fewer worker.
type decider struct {
	up, down int
}

// next is the worker count after an interval with load l, from cur
// workers, between 1 and max.
func (d *decider) next(cur, max int, l load) int {
	saturated := l.busy >= growBusy*float64(cur)
	roomy := !l.hasIdle || l.idle >= growIdle
	fits := cur > 1 && l.busy <= shrinkBusy*float64(cur-1)
	switch {
	case saturated && roomy && cur < max:
		d.down = 0
		if d.up++; d.up >= growAfter {
			d.up = 0
			return cur + 1
		}
	case fits:
		d.up = 0
		if d.down++; d.down >= shrinkAfter {
			d.down = 0
			return cur - 1
		}
	default:
		d.up, d.down = 0, 0
	}
	return cur
}
