package server

import (
	"math"
	"testing"
	"time"
)

func TestActivityAveragesRequestsInProgress(t *testing.T) {
	t0 := time.Unix(1000, 0)
	a := newActivity(time.Second, t0)
	if got := a.milli(t0.Add(time.Hour)); got != 0 {
		t.Errorf("idle: %d, want 0", got)
	}
	// Two requests in progress for a long time: the average reaches 2.
	now := t0.Add(time.Hour)
	a.begin(now, 0)
	a.begin(now, 0)
	if got := a.milli(now.Add(time.Second)); got != int64(math.Round(2000*(1-math.Exp(-1)))) {
		t.Errorf("after one time constant: %d, want 2000·(1−1/e)", got)
	}
	if got := a.milli(now.Add(time.Minute)); got != 2000 {
		t.Errorf("after a minute: %d, want 2000", got)
	}
	// Both end: the average decays by e per time constant.
	now = now.Add(time.Minute)
	a.end(now)
	a.end(now)
	if got := a.milli(now.Add(2 * time.Second)); got != int64(math.Round(2000*math.Exp(-2))) {
		t.Errorf("two time constants later: %d, want 2000/e²", got)
	}
	// A clock that steps back changes nothing.
	if got := a.milli(now); got != int64(math.Round(2000*math.Exp(-2))) {
		t.Errorf("earlier time: %d", got)
	}
}

// A node serving slowly holds more requests at once: at the same request
// rate, ten times the service time reports ten times the load.
func TestActivityFollowsServiceTime(t *testing.T) {
	load := func(service time.Duration) int64 {
		t0 := time.Unix(0, 0)
		a := newActivity(time.Second, t0)
		for i := 0; i < 1000; i++ { // 100 requests a second for 10 s
			at := t0.Add(time.Duration(i) * 10 * time.Millisecond)
			a.begin(at, 0)
			a.end(at.Add(service))
		}
		return a.milli(t0.Add(10 * time.Second))
	}
	fast, slow := load(time.Millisecond), load(10*time.Millisecond)
	if fast < 80 || fast > 120 || slow < 800 || slow > 1200 {
		t.Errorf("100 requests/s: %d thousandths at 1 ms each, %d at 10 ms: want about 100 and 1000", fast, slow)
	}
}

// A request that waited to be read counts as in progress from its arrival,
// once it is read: the average then is what it would have been had the
// node begun it on arrival.
func TestActivityCountsTheWaitToBeRead(t *testing.T) {
	t0 := time.Unix(1000, 0)
	onArrival, onRead := newActivity(time.Second, t0), newActivity(time.Second, t0)
	arrived, read, done := t0.Add(time.Second), t0.Add(1500*time.Millisecond), t0.Add(1600*time.Millisecond)
	onArrival.begin(arrived, 0)
	onRead.begin(read, read.Sub(arrived))
	for _, at := range []time.Time{read, done} {
		if a, r := onArrival.milli(at), onRead.milli(at); a-r > 1 || r-a > 1 || a == 0 {
			t.Errorf("at %v: %d begun on arrival, %d begun on reading; want them equal (to rounding) and positive", at.Sub(t0), a, r)
		}
	}
	onArrival.end(done)
	onRead.end(done)
	if a, r := onArrival.milli(done.Add(time.Second)), onRead.milli(done.Add(time.Second)); a-r > 1 || r-a > 1 {
		t.Errorf("after it ended: %d begun on arrival, %d begun on reading", a, r)
	}
}
