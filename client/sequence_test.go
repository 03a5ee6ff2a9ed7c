package client

import "testing"

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
