package fsm

// MaxPendingPerClient bounds the results a session keeps: the unacknowledged
// sequence numbers of one client. A client past it gets StatusTooManyPending.
const MaxPendingPerClient = 1 << 14

// session is what the state machine remembers of one client so that a
// retried request is applied at most once (the Raft dissertation, §6.3; RIFL).
//
// Invariant: every key of results is >= floor.
type session struct {
	// floor is the highest Ack the client has sent: it holds replies for
	// every sequence number below floor.
	floor uint64
	// results holds the outcome of each applied sequence number >= floor.
	results map[uint64]Result
	// lastSeen is the state machine clock when the client last wrote.
	lastSeen int64
}

// sessions maps client ids to their sessions.
type sessions map[string]*session

// begin looks up the session of op's client, raises its floor to op.Ack, and
// reports either the stored result of a retried op (done true) or that op
// must execute (done false). A fresh client gets a session starting at
// op.Ack.
func (ss sessions) begin(op *Op, now int64) (s *session, res Result, done bool) {
	s = ss[op.Client]
	if s == nil {
		s = &session{floor: op.Ack, results: make(map[uint64]Result)}
		ss[op.Client] = s
	}
	s.lastSeen = now
	if op.Ack > s.floor {
		s.floor = op.Ack
		for seq := range s.results {
			if seq < s.floor {
				delete(s.results, seq)
			}
		}
	}
	if op.Seq < s.floor {
		return s, Result{Status: StatusAcked}, true
	}
	if r, ok := s.results[op.Seq]; ok {
		return s, r, true
	}
	if len(s.results) >= MaxPendingPerClient {
		return s, Result{Status: StatusTooManyPending}, true
	}
	return s, Result{}, false
}

// expire forgets every session idle since before cutoff.
func (ss sessions) expire(cutoff int64) {
	for id, s := range ss {
		if s.lastSeen < cutoff {
			delete(ss, id)
		}
	}
}
