package fsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"

	"github.com/shoal-kv/shoal/shard"
)

// A chunk carries part of a frozen slot range from its source to its
// target (ExportSlots, KindInstallSlots). It is binary and flat, as a
// command is, and says what it is a part of:
//
//	format byte (chunkFormat)
//	uvarints: move id, chunk index, chunk count, range start, range end,
//	the source's revision at the export
//	items to the end, each a tag byte and its fields in the order of
//	appendKeyItem, appendJobItem, appendScheduleItem, appendSessionItem
//
// Times that a job or schedule waits for (run-at, a leased job's lease end,
// a schedule's next interval) travel as the time remaining after the source's
// clock at the freeze; the target counts them from its clock at the
// activation. Times of record (a job's creation, a session's) travel as
// they are.
const chunkFormat = 1

// chunkHeaderMax bounds the bytes of a chunk's header: the format byte and
// six uvarints. Chunks are cut by the sizes of their items alone, so that
// every export of a move cuts the same chunks: two exports differ at most
// in the revision, of which the target keeps the highest it installs.
const chunkHeaderMax = 1 + 6*binary.MaxVarintLen64

// maxChunks bounds the chunk count a chunk may claim.
const maxChunks = 1 << 24

const (
	itemKey      = 1
	itemJob      = 2
	itemSchedule = 3
	itemSession  = 4
)

// errBadChunk is returned (wrapped) for a chunk that does not decode.
var errBadChunk = errors.New("fsm: bad slot chunk")

// slotChunk is a decoded chunk. Its jobs' run-at times and lease ends, and
// its schedules' due times, are the time remaining after the freeze.
type slotChunk struct {
	move                     uint64
	index, total, start, end int
	rev                      uint64
	kv                       map[string]Entry
	jobs                     []*Job
	schedules                []*Schedule
	scheduleDue              []int64
	sessions                 map[string]*movedSession
}

// ExportSlots returns the chunks that install the range frozen by move
// at another shard, each at most maxChunk bytes but for an item larger
// than that, which gets a chunk of its own. The chunks are the same for
// the same frozen state, however often it is exported.
func (f *FSM) ExportSlots(move uint64, maxChunk int) ([][]byte, error) {
	if maxChunk <= 0 {
		return nil, fmt.Errorf("fsm: export slots: chunk size %d, want more than 0", maxChunk)
	}
	// Only the jobs and schedules are copied under the lock (a thaw
	// changes them); the frozen keys and session results no one writes,
	// and they are read after it, so that writes need not wait.
	f.mu.RLock()
	m := f.slots.moves[move]
	if m == nil || m.incoming {
		f.mu.RUnlock()
		return nil, fmt.Errorf("%w: move %d has no range frozen here", ErrNoMove, move)
	}
	jobs := make([]Job, len(m.jobs))
	for i, j := range m.jobs {
		jobs[i] = *j
	}
	schedules := make([]Schedule, len(m.schedules))
	for i, sc := range m.schedules {
		schedules[i] = *sc
	}
	rev := f.rev
	f.mu.RUnlock()
	// The items, one after another in buf, each ending at its ends entry.
	keys := make([]string, 0, len(m.kv))
	size := 0 // of the key items, which are most of a move's bytes
	for k, e := range m.kv {
		keys = append(keys, k)
		size += 1 + len(k) + len(e.Value) + 3*binary.MaxVarintLen64
	}
	buf := make([]byte, 0, size)
	ends := make([]int, 0, len(keys)+len(m.jobs)+len(m.schedules)+len(m.sessions))
	sort.Strings(keys)
	for _, k := range keys {
		buf = appendKeyItem(buf, k, m.kv[k])
		ends = append(ends, len(buf))
	}
	for i := range jobs {
		buf = appendJobItem(buf, &jobs[i], m.clock)
		ends = append(ends, len(buf))
	}
	for i := range schedules {
		buf = appendScheduleItem(buf, &schedules[i], m.clock)
		ends = append(ends, len(buf))
	}
	clients := make([]string, 0, len(m.sessions))
	for c := range m.sessions {
		clients = append(clients, c)
	}
	sort.Strings(clients)
	for _, c := range clients {
		buf = appendSessionItem(buf, c, m.sessions[c])
		ends = append(ends, len(buf))
	}
	// Cut: a chunk ends before the item that would take it past maxChunk.
	cuts := []int{0} // item indexes where chunks start
	size = chunkHeaderMax
	for i, end := range ends {
		n := end
		if i > 0 {
			n -= ends[i-1]
		}
		if size > chunkHeaderMax && size+n > maxChunk {
			cuts = append(cuts, i)
			size = chunkHeaderMax
		}
		size += n
	}
	out := make([][]byte, len(cuts))
	for c, first := range cuts {
		last := len(ends)
		if c+1 < len(cuts) {
			last = cuts[c+1]
		}
		from, to := 0, 0
		if first > 0 {
			from = ends[first-1]
		}
		if last > 0 {
			to = ends[last-1]
		}
		b := make([]byte, 0, chunkHeaderMax+to-from)
		b = append(b, chunkFormat)
		for _, v := range []uint64{move, uint64(c), uint64(len(cuts)), uint64(m.start), uint64(m.end), rev} {
			b = binary.AppendUvarint(b, v)
		}
		out[c] = append(b, buf[from:to]...)
	}
	return out, nil
}

func appendKeyItem(b []byte, key string, e Entry) []byte {
	b = append(b, itemKey)
	b = appendString(b, key)
	b = appendString(b, e.Value)
	return binary.AppendUvarint(b, e.Version)
}

// appendJobItem appends j with its run-at time, and a leased job's lease
// end, as the time remaining after clock (shiftJob).
func appendJobItem(b []byte, j *Job, clock int64) []byte {
	b = append(b, itemJob)
	b = appendString(b, j.ID)
	b = appendString(b, j.Topic)
	b = appendString(b, j.Payload)
	b = append(b, byte(j.state))
	b = binary.AppendVarint(b, int64(j.Attempt))
	b = binary.AppendVarint(b, int64(j.MaxAttempts))
	b = binary.AppendVarint(b, shiftTime(j.RunAt, -clock))
	b = binary.AppendVarint(b, j.Lease)
	deadline := j.Deadline
	if j.state == stateLeased {
		deadline = shiftTime(deadline, -clock)
	}
	b = binary.AppendVarint(b, deadline)
	b = appendString(b, j.Holder)
	b = binary.AppendUvarint(b, j.Token)
	b = binary.AppendUvarint(b, j.Grant)
	b = appendString(b, j.Unique)
	b = binary.AppendVarint(b, j.Backoff)
	b = appendString(b, j.LastError)
	return binary.AppendVarint(b, j.Created)
}

// appendScheduleItem appends s with its next job's time as the time
// remaining after clock.
func appendScheduleItem(b []byte, s *Schedule, clock int64) []byte {
	b = append(b, itemSchedule)
	b = appendString(b, s.Topic)
	b = appendString(b, s.Key)
	b = appendString(b, s.Payload)
	b = binary.AppendVarint(b, s.Interval)
	b = binary.AppendVarint(b, int64(s.MaxAttempts))
	return binary.AppendVarint(b, shiftTime(s.due(), -clock))
}

// appendSessionItem appends a moved session, its results by sequence
// number.
func appendSessionItem(b []byte, client string, ms *movedSession) []byte {
	b = append(b, itemSession)
	b = appendString(b, client)
	b = binary.AppendUvarint(b, ms.floor)
	b = binary.AppendVarint(b, ms.since)
	b = binary.AppendVarint(b, ms.lastSeen)
	seqs := make([]uint64, 0, len(ms.results))
	for seq := range ms.results {
		seqs = append(seqs, seq)
	}
	sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
	b = binary.AppendUvarint(b, uint64(len(seqs)))
	for _, seq := range seqs {
		r := ms.results[seq]
		b = binary.AppendUvarint(b, seq)
		b = binary.AppendVarint(b, int64(r.slot))
		b = append(b, byte(r.Status))
		b = binary.AppendUvarint(b, r.Version)
		b = appendString(b, r.JobID)
		b = appendString(b, r.Topic)
		b = appendString(b, r.Payload)
		b = binary.AppendVarint(b, int64(r.Attempt))
		b = binary.AppendUvarint(b, r.Token)
		b = binary.AppendUvarint(b, r.Grant)
		b = binary.AppendVarint(b, r.Deadline)
		b = binary.AppendUvarint(b, uint64(len(r.JobIDs)))
		for _, id := range r.JobIDs {
			b = appendString(b, id)
		}
		b = binary.AppendUvarint(b, r.BatchSum)
	}
	return b
}

// decodeChunk parses and checks a chunk made by ExportSlots: every item
// well-formed, of a slot of the chunk's range, within the state machine's
// bounds on names. Unless keep, it only checks, keeping none of the items.
func decodeChunk(b []byte, keep bool) (*slotChunk, error) {
	d := decoder{b: b, bad: errBadChunk}
	if format := d.byte(); d.err == nil && format != chunkFormat {
		d.fail(fmt.Sprintf("format %d, want %d", format, chunkFormat))
	}
	c := &slotChunk{move: d.uvarint()}
	index, total, start, end := d.uvarint(), d.uvarint(), d.uvarint(), d.uvarint()
	c.rev = d.uvarint()
	switch {
	case d.err != nil:
	case c.move == 0:
		d.fail("move 0")
	case total == 0 || total > maxChunks || index >= total:
		d.fail(fmt.Sprintf("chunk %d of %d", index, total))
	case start >= end || end > shard.SlotCount:
		d.fail(fmt.Sprintf("slot range [%d, %d)", start, end))
	}
	if d.err != nil {
		return nil, d.err
	}
	c.index, c.total, c.start, c.end = int(index), int(total), int(start), int(end)
	if keep {
		c.kv, c.sessions = make(map[string]Entry), make(map[string]*movedSession)
	}
	inRange := func(slot int, what string) {
		if d.err == nil && (slot < c.start || slot >= c.end) {
			d.fail(fmt.Sprintf("%s of slot %d outside the range", what, slot))
		}
	}
	for d.err == nil && len(d.b) > 0 {
		switch tag := d.byte(); tag {
		case itemKey:
			k, v, version := d.string(), d.string(), d.uvarint()
			if d.err == nil && shard.CheckKey(k) != nil {
				d.fail("bad key")
			}
			inRange(shard.KeySlot(k), "key")
			if keep {
				c.kv[k] = Entry{Value: v, Version: version}
			}
		case itemJob:
			j := d.job()
			inRange(shard.JobSlot(j.ID), "job")
			if keep {
				c.jobs = append(c.jobs, j)
			}
		case itemSchedule:
			s := &Schedule{Topic: d.string(), Key: d.string(), Payload: d.string(), Interval: d.varint(), MaxAttempts: int(d.varint())}
			due := d.varint()
			if d.err == nil && (shard.CheckTopic(s.Topic) != nil || shard.CheckJobKey(s.Key) != nil || s.Interval < int64(shard.MinScheduleInterval)) {
				d.fail("bad schedule")
			}
			inRange(shard.JobKeySlot(s.Topic, s.Key), "schedule")
			if keep {
				c.schedules, c.scheduleDue = append(c.schedules, s), append(c.scheduleDue, due)
			}
		case itemSession:
			client, ms := d.movedSession(c.start, c.end)
			if keep {
				c.sessions[client] = ms
			}
		default:
			d.fail(fmt.Sprintf("unknown item %d", tag))
		}
	}
	if d.err != nil {
		return nil, d.err
	}
	return c, nil
}

// job reads a job item's fields.
func (d *decoder) job() *Job {
	j := &Job{ID: d.string(), Topic: d.string(), Payload: d.string(), state: jobState(d.byte()),
		Attempt: int(d.varint()), MaxAttempts: int(d.varint()), RunAt: d.varint(), Lease: d.varint(),
		Deadline: d.varint(), Holder: d.string(), Token: d.uvarint(), Grant: d.uvarint(), Unique: d.string(),
		Backoff: d.varint(), LastError: d.string(), Created: d.varint(), index: -1}
	if d.err == nil && (shard.CheckJobID(j.ID) != nil || shard.CheckTopic(j.Topic) != nil || j.state > stateDead ||
		j.Unique != "" && shard.CheckJobKey(j.Unique) != nil) {
		d.fail("bad job")
	}
	return j
}

// movedSession reads a session item's fields; its results must be of
// slots of [start, end).
func (d *decoder) movedSession(start, end int) (string, *movedSession) {
	client := d.string()
	ms := &movedSession{floor: d.uvarint(), since: d.varint(), lastSeen: d.varint(), results: make(map[uint64]keptResult)}
	n := d.uvarint()
	if d.err == nil && (client == "" || len(client) > shard.MaxKeySize) {
		d.fail("bad client id")
	}
	// Every result takes at least 14 bytes.
	if d.err == nil && n > uint64(len(d.b)/14+1) {
		d.fail("result count past the end")
	}
	for i := uint64(0); d.err == nil && i < n; i++ {
		seq := d.uvarint()
		r := keptResult{slot: int(d.varint())}
		r.Status, r.Version = Status(d.byte()), d.uvarint()
		r.JobID, r.Topic, r.Payload = d.string(), d.string(), d.string()
		r.Attempt, r.Token, r.Grant, r.Deadline = int(d.varint()), d.uvarint(), d.uvarint(), d.varint()
		ids := d.uvarint()
		if d.err == nil && (ids > MaxBatch || ids > uint64(len(d.b))) {
			d.fail("bad id count")
		}
		for k := uint64(0); d.err == nil && k < ids; k++ {
			r.JobIDs = append(r.JobIDs, d.string())
		}
		r.BatchSum = d.uvarint()
		switch {
		case d.err != nil:
		case r.Status > StatusWrongShard:
			d.fail(fmt.Sprintf("status %d", r.Status))
		case r.slot < start || r.slot >= end:
			d.fail(fmt.Sprintf("result of slot %d outside the range", r.slot))
		case seq < ms.floor:
			d.fail("result below the floor")
		}
		ms.results[seq] = r
	}
	return client, ms
}
