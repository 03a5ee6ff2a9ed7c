package wire

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Faults describes how a link mistreats the datagrams crossing it. The zero
// value is a perfect link.
type Faults struct {
	// Drop is the probability that a datagram is lost.
	Drop float64
	// Duplicate is the probability that a datagram arrives twice.
	Duplicate float64
	// Reorder is the probability that a datagram is held back long enough
	// for later ones to overtake it.
	Reorder float64
	// Delay is added to every datagram; Jitter adds a uniform random
	// extra in [0, Jitter).
	Delay, Jitter time.Duration
}

// Validate reports probabilities outside [0, 1] or negative durations.
func (f Faults) Validate() error {
	for _, p := range []struct {
		name string
		v    float64
	}{{"drop", f.Drop}, {"duplicate", f.Duplicate}, {"reorder", f.Reorder}} {
		if !(p.v >= 0 && p.v <= 1) {
			return fmt.Errorf("wire: %s probability %v is outside [0, 1]", p.name, p.v)
		}
	}
	if f.Delay < 0 || f.Jitter < 0 {
		return fmt.Errorf("wire: negative delay %v or jitter %v", f.Delay, f.Jitter)
	}
	return nil
}

// minReorderHold is how long a reordered datagram is held at least, so that
// one sent right after it overtakes it even on a link without delay.
const minReorderHold = time.Millisecond

// link applies Faults to the datagrams of one direction of one link, with a
// generator of its own so that its decisions repeat for a given seed and
// sequence of datagrams, whatever other links do.
type link struct {
	mu  sync.Mutex
	rng *rand.Rand
}

func newLink(seed int64, a, b netip.AddrPort) *link {
	h := uint64(14695981039346656037) // FNV-1a over both addresses
	for _, s := range []string{a.String(), "|", b.String()} {
		for i := 0; i < len(s); i++ {
			h = (h ^ uint64(s[i])) * 1099511628211
		}
	}
	return &link{rng: rand.New(rand.NewPCG(uint64(seed), h))}
}

// fate is what happens to one datagram.
type fate struct {
	copies int              // 0 dropped, 1, or 2 duplicated
	delay  [2]time.Duration // per copy
}

func (l *link) decide(f Faults) fate {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.rng.Float64() < f.Drop {
		return fate{}
	}
	ft := fate{copies: 1}
	if l.rng.Float64() < f.Duplicate {
		ft.copies = 2
	}
	for i := 0; i < ft.copies; i++ {
		d := f.Delay
		if f.Jitter > 0 {
			d += time.Duration(l.rng.Int64N(int64(f.Jitter)))
		}
		if l.rng.Float64() < f.Reorder {
			hold := minReorderHold + 2*(f.Delay+f.Jitter)
			d += minReorderHold + time.Duration(l.rng.Int64N(int64(hold)))
		}
		ft.delay[i] = d
	}
	return ft
}

// deliver hands b to to after the fate's delays: at once when there is none,
// from a timer otherwise. b must not be used by the caller afterwards.
func (ft fate) deliver(b []byte, to func([]byte)) {
	for i := 0; i < ft.copies; i++ {
		if ft.delay[i] == 0 {
			to(b)
			continue
		}
		time.AfterFunc(ft.delay[i], func() { to(b) })
	}
}

// FaultStats counts what a faulty link or network did.
type FaultStats struct {
	Sent, Dropped, Duplicated, Delivered uint64
}

type faultCounters struct {
	sent, dropped, duplicated, delivered atomic.Uint64
}

func (c *faultCounters) record(ft fate) {
	c.sent.Add(1)
	switch ft.copies {
	case 0:
		c.dropped.Add(1)
	case 2:
		c.duplicated.Add(1)
	}
}

func (c *faultCounters) snapshot() FaultStats {
	return FaultStats{Sent: c.sent.Load(), Dropped: c.dropped.Load(), Duplicated: c.duplicated.Load(), Delivered: c.delivered.Load()}
}

// Faulty wraps a Transport and applies Faults to every datagram it sends
// and every datagram it receives, as a lossy link between it and the rest
// of the network would. It is how the demo and the tests put a real UDP
// client behind a bad link.
type Faulty struct {
	t         Transport
	faults    atomic.Pointer[Faults]
	out, in   *link
	inbox     chan datagram
	done      chan struct{}
	closeOnce sync.Once
	pumpDone  chan struct{}
	counters  faultCounters
}

type datagram struct {
	b       []byte
	from    netip.AddrPort
	arrived time.Time // when it was queued for Receive
}

// faultyInbox bounds the datagrams a Faulty holds for Receive; past it they
// are dropped, as a full socket buffer would.
const faultyInbox = 4096

// WithFaults wraps t. Decisions come from generators seeded with seed, one
// per direction. The wrapper owns t: Close closes it.
func WithFaults(t Transport, f Faults, seed int64) (*Faulty, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	local := t.LocalAddr()
	w := &Faulty{
		t:        t,
		out:      newLink(seed, local, netip.AddrPort{}),
		in:       newLink(seed, netip.AddrPort{}, local),
		inbox:    make(chan datagram, faultyInbox),
		done:     make(chan struct{}),
		pumpDone: make(chan struct{}),
	}
	w.faults.Store(&f)
	go w.pump()
	return w, nil
}

// SetFaults changes the faults from now on.
func (w *Faulty) SetFaults(f Faults) error {
	if err := f.Validate(); err != nil {
		return err
	}
	w.faults.Store(&f)
	return nil
}

// Stats counts both directions together.
func (w *Faulty) Stats() FaultStats { return w.counters.snapshot() }

// LocalAddr returns the wrapped transport's address.
func (w *Faulty) LocalAddr() netip.AddrPort { return w.t.LocalAddr() }

// Send passes b to the wrapped transport according to the faults.
func (w *Faulty) Send(b []byte, addr netip.AddrPort) error {
	ft := w.out.decide(*w.faults.Load())
	w.counters.record(ft)
	if ft.copies == 0 {
		return nil
	}
	if ft.delay[0] == 0 && ft.copies == 1 {
		w.counters.delivered.Add(1)
		return w.t.Send(b, addr)
	}
	ft.deliver(append([]byte(nil), b...), func(b []byte) {
		w.counters.delivered.Add(1)
		_ = w.t.Send(b, addr) // a delayed send has nobody to report to
	})
	return nil
}

// pump moves datagrams from the wrapped transport to the inbox through the
// inbound faults, until the transport is closed.
func (w *Faulty) pump() {
	defer close(w.pumpDone)
	buf := make([]byte, MaxDatagramSize+1)
	for {
		n, from, _, err := w.t.Receive(buf)
		if err != nil {
			return
		}
		ft := w.in.decide(*w.faults.Load())
		w.counters.record(ft)
		ft.deliver(append([]byte(nil), buf[:n]...), func(b []byte) {
			select {
			case w.inbox <- datagram{b, from, time.Now()}:
				w.counters.delivered.Add(1)
			default:
			}
		})
	}
}

// Receive returns the next datagram that survived the inbound faults. It
// arrived when the faults delivered it, after any delay they gave it.
func (w *Faulty) Receive(buf []byte) (int, netip.AddrPort, time.Time, error) {
	select {
	case d := <-w.inbox:
		return copy(buf, d.b), d.from, d.arrived, nil
	case <-w.done:
		return 0, netip.AddrPort{}, time.Time{}, fmt.Errorf("wire: receive: %w", net.ErrClosed)
	}
}

// Close closes the wrapped transport and waits for the pump to stop.
func (w *Faulty) Close() error {
	var err error
	w.closeOnce.Do(func() {
		close(w.done)
		err = w.t.Close()
		<-w.pumpDone
	})
	return err
}
