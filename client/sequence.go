package client

import "sync"

// sequencer hands out the request sequence numbers of one client and keeps
// its acknowledgement floor: the lowest sequence number of a mutating
// request still waiting for its reply. Nodes keep the result of every
// mutating request at or above the floor, to answer retries; the floor lets
// them forget the rest. Reads are not remembered by nodes, so they never
// hold the floor back.
type sequencer struct {
	mu   sync.Mutex
	next uint64              // the next number to hand out; starts at 1
	open map[uint64]struct{} // mutating requests without a reply
	low  uint64              // min(open), or next when open is empty
}

func newSequencer() *sequencer {
	return &sequencer{next: 1, low: 1, open: make(map[uint64]struct{})}
}

// begin returns a new sequence number; a mutating one holds the floor down
// until end.
func (s *sequencer) begin(mutating bool) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	seq := s.next
	s.next++
	if mutating {
		s.open[seq] = struct{}{}
		if len(s.open) == 1 {
			s.low = seq
		}
	} else if len(s.open) == 0 {
		s.low = s.next
	}
	return seq
}

// end records that the request seq has its reply (or was given up on: its
// outcome can then no longer be learned, only guessed by reading).
func (s *sequencer) end(seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.open[seq]; !ok {
		return
	}
	delete(s.open, seq)
	if seq != s.low {
		return
	}
	s.low = s.next
	for o := range s.open {
		s.low = min(s.low, o)
	}
}

// floor returns the current acknowledgement floor.
func (s *sequencer) floor() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.low
}
