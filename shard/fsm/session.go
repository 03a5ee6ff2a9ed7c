package fsm

import (
	"container/list"
	"encoding/binary"
	"hash/fnv"
	"slices"
	"time"
)

// MaxPendingPerClient bounds the results a session keeps: the unacknowledged
// sequence numbers of one client. A client past it gets StatusTooManyPending.
const MaxPendingPerClient = 1 << 14

// MaxKeptIDBytes bounds the bytes of job ids a session's kept results
// hold: the ids a batch answered that are not its jobs' own (those of live
// jobs holding a uniqueness key), up to shard.MaxKeySize each. A client
// whose session holds as many gets StatusTooManyPending until it
// acknowledges results. The check comes before an op runs, so a session
// holds at most this plus one batch's ids. 64 KiB is a datagram's worth:
// about 2,000 ids of the Go client's form, where a well-behaved client
// keeps few (only uniqueness keys found held).
const MaxKeptIDBytes = 64 << 10

// DefaultMaxSessions is the number of client sessions a shard keeps by
// default (Config.MaxSessions). A client that writes to a shard holding as
// many sessions takes the place of the session idle longest.
const DefaultMaxSessions = 10_000

// RetrySkew is how far apart the clocks of the nodes (and a client's count
// of its request's age) may be for a shard to still recognize a retry it
// cannot vouch for: see sessions.begin.
const RetrySkew = time.Second

// session is what the state machine remembers of one client so that a
// retried request is applied at most once (the Raft dissertation, §6.3; RIFL).
//
// Invariant: every key of results is >= floor.
type session struct {
	client string
	// floor is the highest Ack the client has sent: it holds replies for
	// every sequence number below floor.
	floor uint64
	// results holds the outcome of each applied sequence number >= floor.
	results map[uint64]keptResult
	// idBytes is the bytes of the job ids in results (keptIDBytes).
	idBytes int
	// since is the state machine clock when the session was made;
	// lastSeen when the client last wrote.
	since, lastSeen int64
	// elem is the session's place in sessions.idle.
	elem *list.Element
}

// keptResult is a result a session keeps, and the slot of the op it
// answers (opSlot; -1 for an op of no one slot, an acquire's), by which
// it moves with its slot to another shard.
type keptResult struct {
	Result
	slot int
}

// sessions maps client ids to their sessions, at most max of them.
//
// Invariant: idle holds every session once, in the order their clients
// last wrote, the session idle longest first. The clock never goes back,
// so that is also the order of lastSeen.
type sessions struct {
	max      int
	byClient map[string]*session
	idle     list.List
	// lastForgotten is the latest lastSeen of a session forgotten, evicted
	// or expired: every request a forgotten session applied began by then.
	// 0 if none was forgotten.
	lastForgotten int64
}

func newSessions(max int) *sessions {
	return &sessions{max: max, byClient: make(map[string]*session)}
}

// add puts s in, as the session seen most recently.
func (ss *sessions) add(s *session) {
	ss.byClient[s.client] = s
	s.elem = ss.idle.PushBack(s)
}

// forgetOldest drops the session idle longest.
func (ss *sessions) forgetOldest() {
	s := ss.idle.Remove(ss.idle.Front()).(*session)
	delete(ss.byClient, s.client)
	ss.lastForgotten = max(ss.lastForgotten, s.lastSeen)
}

// begin looks up the session of op's client, raises its floor to op.Ack, and
// reports either the stored result of a retried op (done true) or that op
// must execute (done false). A fresh client gets a session starting at
// op.Ack; when the shard holds its most sessions already, the session idle
// longest is forgotten to make room.
//
// A forgotten session cannot answer a retry of a request it applied: the
// retry would be applied again. So a retry (op.Began set: when its request
// was first sent) that no session here holds the result of, whose client
// has no session older than the request, is refused with
// StatusSessionExpired if the shard has forgotten a session that was in
// use after the request began (RetrySkew allowing for clocks): it may have
// been applied under that session. Sessions idle longest go first, so
// without a flood of new clients only retries older than any client waits
// are refused. The decision uses only the log: op.Began is
// written in the op by the node that proposed it.
func (ss *sessions) begin(op *Op, now int64) (s *session, res Result, done bool) {
	s = ss.byClient[op.Client]
	if s != nil {
		s.lastSeen = now
		ss.idle.MoveToBack(s.elem)
		s.raiseFloor(op.Ack)
		if op.Seq < s.floor {
			return s, Result{Status: StatusAcked}, true
		}
		if r, ok := s.results[op.Seq]; ok {
			return s, r.Result, true
		}
	}
	if began := op.Began - int64(RetrySkew); op.Began != 0 && ss.lastForgotten >= began && (s == nil || s.since > began) {
		return s, Result{Status: StatusSessionExpired}, true
	}
	if s == nil {
		if len(ss.byClient) >= ss.max {
			ss.forgetOldest()
		}
		s = &session{client: op.Client, floor: op.Ack, results: make(map[uint64]keptResult), since: now, lastSeen: now}
		ss.add(s)
	}
	if len(s.results) >= MaxPendingPerClient || s.idBytes >= MaxKeptIDBytes {
		return s, Result{Status: StatusTooManyPending}, true
	}
	return s, Result{}, false
}

// keep stores res, as kept, as the result of sequence number seq.
func (s *session) keep(seq uint64, res keptResult) {
	s.results[seq] = res
	s.idBytes += keptIDBytes(res.Result)
}

// raiseFloor forgets the results below floor, if it is above the
// session's.
func (s *session) raiseFloor(floor uint64) {
	if floor <= s.floor {
		return
	}
	s.floor = floor
	for seq, r := range s.results {
		if seq < s.floor {
			s.idBytes -= keptIDBytes(r.Result)
			delete(s.results, seq)
		}
	}
}

// keptIDBytes is the bytes of the job ids a kept result holds.
func keptIDBytes(r Result) int {
	n := 0
	for _, id := range r.JobIDs {
		n += len(id)
	}
	return n
}

// expire forgets every session idle since before cutoff.
func (ss *sessions) expire(cutoff int64) {
	for ss.idle.Len() > 0 && ss.idle.Front().Value.(*session).lastSeen < cutoff {
		ss.forgetOldest()
	}
}

// kept returns what a session keeps of op's result res to answer a retry:
// all of it but a job's payload and topic, up to 60 KiB and 1 KiB, which
// are read from the job again when a retried acquire needs them, and the
// ids of a batch's jobs that are their own, which the retry carries
// (recall), kept as their fingerprint instead.
func kept(op *Op, res Result) Result {
	res.Payload, res.Topic = "", ""
	if res.JobIDs != nil {
		ids := make([]string, len(res.JobIDs))
		for i, id := range res.JobIDs {
			if id != op.Batch[i].JobID {
				ids[i] = id
			}
		}
		res.JobIDs, res.BatchSum = ids, batchSum(op.Batch)
	}
	return res
}

// batchSum fingerprints the ids of batch's jobs, in order: FNV-1a over
// each id's length and bytes, never 0.
func batchSum(batch []Op) uint64 {
	h := fnv.New64a()
	var n [4]byte
	for i := range batch {
		binary.BigEndian.PutUint32(n[:], uint32(len(batch[i].JobID)))
		h.Write(n[:])
		h.Write([]byte(batch[i].JobID))
	}
	return max(h.Sum64(), 1)
}

// recall returns the answer to a retry of op that its session answered
// with res. A retried acquire (or complete-and-acquire) gets its grant's
// payload back from the job; if the job is no longer leased under the
// grant's token (completed, or its lease ran out and another took it), the
// grant is lost, and the retry finds nothing, as if its lease had run out
// unused. A complete-and-acquire's completion stands either way. A batch
// whose jobs are not those of the batch that used the sequence number (a
// client reusing it) is refused with StatusInvalid: the ids of the first
// batch's jobs are not kept to answer it.
func (f *FSM) recall(op *Op, res Result) Result {
	if op.Kind == KindEnqueueBatch && res.JobIDs != nil {
		if len(op.Batch) != len(res.JobIDs) || res.BatchSum != 0 && res.BatchSum != batchSum(op.Batch) {
			return Result{Status: StatusInvalid}
		}
		res.BatchSum = 0
		ids := slices.Clone(res.JobIDs)
		for i, id := range ids {
			if id == "" {
				ids[i] = op.Batch[i].JobID
			}
		}
		res.JobIDs = ids
		return res
	}
	if op.Kind != KindAcquire && op.Kind != KindCompleteAcquire || res.Status != StatusOK || res.JobID == "" {
		return res
	}
	j := f.jobs.jobs[res.JobID]
	if j == nil || j.state != stateLeased || j.Token != res.Token || j.Grant != res.Grant {
		if op.Kind == KindCompleteAcquire {
			return Result{}
		}
		return Result{Status: StatusEmpty}
	}
	res.Payload, res.Topic = j.Payload, j.Topic
	return res
}
