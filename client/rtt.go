package client

import (
	"sync"
	"time"
)

// rttEstimator derives an attempt timeout from measured round trips, as TCP
// derives its retransmission timeout (RFC 6298): srtt + 4·rttvar, kept
// within [min, max]. Every attempt has its own transaction id, so a reply,
// however late, measures the round trip of the attempt it answers.
//
// Under load round trips have a long tail (a write waits on a quorum's
// disk flushes) that srtt + 4·rttvar sits below, and every attempt retried
// only for being slow is another proposal. So the timeout is also at least
// half again the second longest of the last len(recent) round trips (about
// their 99th percentile), of those no older than tailAge. A lost datagram
// leaves no sample, so on a lossy but idle network the timeout stays short.
//
// The tail counts up to tailCap times srtt. A stall that delays many
// requests at once (a failover, a disk stopping) fills the ring with its
// round trips; uncapped, they would hold every timeout at half again the
// stall until they aged out, and on a lossy link each lost datagram would
// wait that long for its retry. srtt forgets a stall within a few dozen
// round trips, and the cap with it.
type rttEstimator struct {
	min, max, initial time.Duration

	mu      sync.Mutex
	srtt    time.Duration
	rttvar  time.Duration
	samples int
	backoff int // doublings since the last sample
	recent  [128]roundTrip
	tail    time.Duration // the second longest of recent, as of tailAt
	tailAt  time.Time
}

// roundTrip is a measured round trip and when it ended.
type roundTrip struct {
	rtt time.Duration
	at  time.Time
}

const (
	// tailEvery is how many samples pass between updates of the tail.
	tailEvery = 8
	// tailAge is how long a round trip counts in the tail; the tail is
	// also updated when it is older than a tenth of that.
	tailAge = 10 * time.Second
	// tailCap bounds the tail's part in the timeout as a multiple of srtt.
	// Under load half again the 99th percentile of writes' round trips
	// measured 3.3-6 times their mean (shoal bench, sets at 64 and 256
	// clients).
	tailCap = 8
)

func (e *rttEstimator) sample(rtt time.Duration) { e.sampleAt(rtt, time.Now()) }

func (e *rttEstimator) sampleAt(rtt time.Duration, now time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.samples == 0 {
		e.srtt, e.rttvar = rtt, rtt/2
	} else {
		d := e.srtt - rtt
		if d < 0 {
			d = -d
		}
		e.rttvar = (3*e.rttvar + d) / 4
		e.srtt = (7*e.srtt + rtt) / 8
	}
	e.recent[e.samples%len(e.recent)] = roundTrip{rtt, now}
	e.samples++
	e.backoff = 0
	if e.samples%tailEvery == 0 {
		e.updateTail(now)
	}
}

// updateTail sets the tail to the second longest of the recent round trips
// no older than tailAge.
func (e *rttEstimator) updateTail(now time.Time) {
	var first, second time.Duration
	for _, r := range e.recent[:min(e.samples, len(e.recent))] {
		switch {
		case now.Sub(r.at) > tailAge:
		case r.rtt > first:
			first, second = r.rtt, first
		case r.rtt > second:
			second = r.rtt
		}
	}
	e.tail, e.tailAt = second, now
}

// tooShort records a request whose every attempt timed out: the estimate
// is below the round trip, and the timeout doubles until a sample comes
// (as RFC 6298 backs off its timer). Without this, a client whose estimate
// fell below a round trip that grew under load would never wait long
// enough to measure one.
func (e *rttEstimator) tooShort() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.backoff = min(e.backoff+1, 6)
}

// timeout returns how long to wait for an attempt of a request whose
// earlier attempts got no reply timedOut times. As TCP backs off its
// retransmission timer, each such attempt waits twice as long as the one
// before: a reply that is slow because the cluster is busy then still
// arrives.
func (e *rttEstimator) timeout(timedOut int) time.Duration { return e.timeoutAt(timedOut, time.Now()) }

func (e *rttEstimator) timeoutAt(timedOut int, now time.Time) time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	base := e.initial
	if e.samples > 0 {
		if now.Sub(e.tailAt) > tailAge/10 {
			e.updateTail(now)
		}
		base = max(e.srtt+4*e.rttvar, min(e.tail*3/2, tailCap*e.srtt), e.min)
	}
	// 12 doublings take any base past any sensible maximum without
	// overflowing.
	return min(base<<min(e.backoff+timedOut, 12), e.max)
}

// smoothed returns the smoothed round trip time, 0 before any sample.
func (e *rttEstimator) smoothed() time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.srtt
}
