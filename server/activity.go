package server

import (
	"math"
	"sync"
	"time"
)

// activity is the load a node reports in every reply and heartbeat, and
// what clients' pickers weigh: the number of client requests in progress
// at the node (from their arrival at its socket to sending their replies),
// averaged over time with exponentially decaying weights of time constant
// tau. A node that serves slowly holds more requests at once, in its
// socket's buffer or in its handlers, and so reports more load, whatever
// its request rate.
type activity struct {
	mu         sync.Mutex
	tau        float64 // seconds
	inProgress int
	avg        float64
	at         time.Time // avg is the average up to at
}

func newActivity(tau time.Duration, now time.Time) *activity {
	return &activity{tau: max(tau, time.Millisecond).Seconds(), at: now}
}

// advance brings avg up to now. In progress has held its value since at,
// and the exponential average of a constant x over dt moves toward x by
// 1−e^(−dt/tau).
func (a *activity) advance(now time.Time) {
	if dt := now.Sub(a.at).Seconds(); dt > 0 {
		x := float64(a.inProgress)
		a.avg = x + (a.avg-x)*math.Exp(-dt/a.tau)
		a.at = now
	}
}

// begin counts a request in progress from now, and over the time it waited
// before now to be read.
func (a *activity) begin(now time.Time, waited time.Duration) {
	a.mu.Lock()
	a.advance(now)
	if waited > 0 {
		// One more request in progress over [now−waited, now] adds its
		// weight in the average at now: ∫ e^(−(now−s)/tau) ds / tau over
		// the interval, 1−e^(−waited/tau). The reports sent meanwhile
		// missed it; the ones from now on count it as if they had not.
		a.avg += 1 - math.Exp(-waited.Seconds()/a.tau)
	}
	a.inProgress++
	a.mu.Unlock()
}

// end counts a request no longer in progress from now.
func (a *activity) end(now time.Time) {
	a.mu.Lock()
	a.advance(now)
	a.inProgress--
	a.mu.Unlock()
}

// milli returns the average up to now in thousandths of a request, the
// unit of wire.Message.Activity.
func (a *activity) milli(now time.Time) int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.advance(now)
	return int64(math.Round(a.avg * 1000))
}
