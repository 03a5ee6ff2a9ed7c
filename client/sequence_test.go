package client

import (
	"testing"
	"time"
)

func TestSequencerFloor(t *testing.T) {
	s := newSequencer()
	w1 := s.begin(true)  // 1
	r2 := s.begin(false) // 2
	w3 := s.begin(true)  // 3
	if w1 != 1 || r2 != 2 || w3 != 3 {
		t.Fatalf("sequence numbers %d %d %d", w1, r2, w3)
	}
	if f := s.floor(); f != 1 {
		t.Errorf("floor %d with write 1 open", f)
	}
	s.end(r2) // reads never hold the floor
	if f := s.floor(); f != 1 {
		t.Errorf("floor %d after a read ended", f)
	}
	s.end(w3)
	if f := s.floor(); f != 1 {
		t.Errorf("floor %d: write 1 is still open", f)
	}
	s.end(w1)
	if f := s.floor(); f != 4 {
		t.Errorf("floor %d with nothing open, want the next number 4", f)
	}
	w4 := s.begin(true)
	w5 := s.begin(true)
	s.end(w4)
	if f := s.floor(); f != w5 {
		t.Errorf("floor %d, want %d", f, w5)
	}
	s.end(w5)
	s.end(w5) // twice is harmless
	if f := s.floor(); f != 6 {
		t.Errorf("floor %d, want 6", f)
	}
}

func TestRTTEstimator(t *testing.T) {
	e := rttEstimator{min: 10 * time.Millisecond, max: time.Second, initial: 250 * time.Millisecond}
	if d := e.timeout(); d != 250*time.Millisecond {
		t.Errorf("initial timeout %v", d)
	}
	for i := 0; i < 50; i++ {
		e.sample(40 * time.Millisecond)
	}
	// Steady samples: srtt → 40ms, rttvar → 0.
	if d := e.timeout(); d < 40*time.Millisecond || d > 45*time.Millisecond {
		t.Errorf("steady 40ms round trips give timeout %v", d)
	}
	for i := 0; i < 50; i++ {
		e.sample(time.Microsecond)
	}
	if d := e.timeout(); d != 10*time.Millisecond {
		t.Errorf("timeout %v below the minimum", d)
	}
	e.sample(10 * time.Second)
	if d := e.timeout(); d != time.Second {
		t.Errorf("timeout %v above the maximum", d)
	}
}
