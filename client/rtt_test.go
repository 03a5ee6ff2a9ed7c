package client

import (
	"testing"
	"time"
)

func TestRTTEstimator(t *testing.T) {
	e := rttEstimator{min: 10 * time.Millisecond, max: time.Second, initial: 250 * time.Millisecond}
	if d := e.timeout(0); d != 250*time.Millisecond {
		t.Errorf("initial timeout %v", d)
	}
	for i := 0; i < 50; i++ {
		e.sample(40 * time.Millisecond)
	}
	// Steady samples: srtt → 40ms, rttvar → 0, and half again the tail.
	if d := e.timeout(0); d != 60*time.Millisecond {
		t.Errorf("steady 40ms round trips give timeout %v", d)
	}
	for i := 0; i < 2*len(e.recent); i++ { // until the 40ms round trips leave the tail
		e.sample(time.Microsecond)
	}
	if d := e.timeout(0); d != 10*time.Millisecond {
		t.Errorf("timeout %v below the minimum", d)
	}
	e.sample(10 * time.Second)
	if d := e.timeout(0); d != time.Second {
		t.Errorf("timeout %v above the maximum", d)
	}
	e.tooShort()
	if d := e.timeout(0); d != time.Second {
		t.Errorf("backing off above the maximum: %v", d)
	}
}

// Requests that time out on every attempt double the timeout until a
// round trip is measured.
func TestRTTEstimatorBacksOff(t *testing.T) {
	e := rttEstimator{min: 10 * time.Millisecond, max: time.Second, initial: 250 * time.Millisecond}
	for i := 0; i < 50; i++ {
		e.sample(20 * time.Millisecond)
	}
	base := e.timeout(0)
	e.tooShort()
	e.tooShort()
	if d := e.timeout(0); d != 4*base {
		t.Errorf("after two failed requests: %v, want %v", d, 4*base)
	}
	// An attempt after one that timed out within the request waits twice
	// as long again.
	if d := e.timeout(1); d != 8*base {
		t.Errorf("second attempt after two failed requests: %v, want %v", d, 8*base)
	}
	for i := 0; i < 10; i++ {
		e.tooShort()
	}
	if d := e.timeout(0); d != time.Second {
		t.Errorf("backed off to %v, want the maximum", d)
	}
	e.sample(20 * time.Millisecond)
	if d := e.timeout(0); d < base-time.Millisecond || d > base+time.Millisecond {
		t.Errorf("after a sample: %v, want about %v", d, base)
	}
}

// Round trips with a long tail, as writes under load have: the timeout
// stays above all but about the slowest 1% of recent ones, which
// srtt + 4·rttvar alone does not; one outlier does not set it, and the
// tail ages out as fast round trips come.
func TestRTTEstimatorCoversTheTail(t *testing.T) {
	e := rttEstimator{min: time.Millisecond, max: 2 * time.Second, initial: 250 * time.Millisecond}
	for i := 0; i < 1000; i++ {
		rtt := 10 * time.Millisecond
		if i%50 == 0 {
			rtt = 80 * time.Millisecond // 2% of them
		}
		e.sample(rtt)
	}
	if d, base := e.timeout(0), e.srtt+4*e.rttvar; d < 80*time.Millisecond || base >= 80*time.Millisecond {
		t.Errorf("timeout %v (srtt + 4·rttvar %v) with 2%% of round trips at 80ms", d, base)
	}

	e = rttEstimator{min: time.Millisecond, max: 2 * time.Second, initial: 250 * time.Millisecond}
	for i := 0; i < 1000; i++ {
		rtt := 10 * time.Millisecond
		if i == 900 {
			rtt = time.Second
		}
		e.sample(rtt)
	}
	if d := e.timeout(0); d > 20*time.Millisecond {
		t.Errorf("one round trip of 1s among 10ms ones sets the timeout to %v", d)
	}

	for i := 0; i < 200; i++ {
		e.sample(80 * time.Millisecond)
	}
	for i := 0; i < 2*len(e.recent); i++ {
		e.sample(10 * time.Millisecond)
	}
	if d := e.timeout(0); d > 20*time.Millisecond {
		t.Errorf("a tail of 80ms gone for %d round trips still sets the timeout to %v", 2*len(e.recent), d)
	}
}

// A stall that slowed many round trips at once holds the timeout up while
// it fills half the ring, and only up to tailCap times the median round
// trip after that; and the ring forgets it after tailAge, also for a
// client that sends too little to push its round trips out.
func TestRTTEstimatorForgetsAStall(t *testing.T) {
	e := rttEstimator{min: time.Millisecond, max: 2 * time.Second, initial: 250 * time.Millisecond}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < 64; i++ {
		e.sampleAt(10*time.Millisecond, t0)
	}
	for i := 0; i < 64; i++ {
		e.sampleAt(500*time.Millisecond, t0)
	}
	if d := e.timeoutAt(0, t0); d < 500*time.Millisecond {
		t.Errorf("during a stall of 500ms round trips, the timeout is %v", d)
	}
	later := t0.Add(time.Second)
	for i := 0; i < 80; i++ { // enough for srtt + 4·rttvar to forget the stall, not the ring
		e.sampleAt(10*time.Millisecond, later)
	}
	if d := e.timeoutAt(0, later); d > 200*time.Millisecond {
		t.Errorf("80 round trips of 10ms after a stall of 500ms ones, the timeout is %v", d)
	}

	// A client that sends little: the stall's round trips leave the tail
	// after tailAge.
	e = rttEstimator{min: time.Millisecond, max: 2 * time.Second, initial: 250 * time.Millisecond}
	for i := 0; i < 64; i++ {
		e.sampleAt(500*time.Millisecond, t0)
	}
	for i := 0; i < 80; i++ {
		e.sampleAt(10*time.Millisecond, later)
	}
	if d := e.timeoutAt(0, t0.Add(tailAge+time.Second)); d > 20*time.Millisecond {
		t.Errorf("%v after the stall, with 10ms round trips since, the timeout is %v", tailAge+time.Second, d)
	}
}
