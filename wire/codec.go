package wire

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/jackpal/bencode-go"
	"github.com/shoal-kv/shoal/shard"
)

// Errors of the codec, testable with errors.Is.
var (
	// ErrMalformed: a datagram that is not a valid message.
	ErrMalformed = errors.New("wire: malformed message")
	// ErrTooLarge: a message over MaxMessageSize, or a key or value over
	// its limit.
	ErrTooLarge = errors.New("wire: too large")
)

// Encode serializes m as a bencoded dict. Keys follow KRPC where it has one:
// t transaction id, y type, q op, a arguments, r result, e [code, message].
// shoal adds c client, s sequence, k ack, g age and w timeout in
// milliseconds, n node, l activity, ld leader hint and h heartbeat.
func Encode(m *Message) ([]byte, error) {
	b, err := appendMessage(make([]byte, 0, 256), m)
	if err != nil {
		return nil, err
	}
	if len(b) > MaxMessageSize {
		return nil, fmt.Errorf("%w: message of %d bytes exceeds %d", ErrTooLarge, len(b), MaxMessageSize)
	}
	return b, nil
}

// appendMessage appends m as the dict Encode writes, its keys in order.
func appendMessage(b []byte, m *Message) ([]byte, error) {
	b = append(b, 'd')
	switch m.Type {
	case TypeQuery:
		b = optDict(b, "a", &m.Args, appendArgs)
		b = optStr(b, "c", m.Client)
		b = optMillis(b, "g", m.Age)
		b = optUint(b, "k", m.Ack)
		b = optStr(b, "p", m.Proof)
		b = putStr(b, "q", string(m.Op))
		b = optUint(b, "s", m.Seq)
		b = putUint(b, "t", m.TxID)
		b = optMillis(b, "w", m.Timeout)
	case TypeResponse, TypeError:
		if m.Type == TypeError {
			if m.Err == nil {
				return nil, fmt.Errorf("wire: encode: error message without an error")
			}
			b = append(appendBytes(b, "e"), 'l')
			b = appendInt(b, int64(m.Err.Code))
			b = append(appendBytes(b, m.Err.Message), 'e')
		}
		b = putInt(b, "l", m.Activity)
		if m.Leader != nil {
			b = append(appendBytes(b, "ld"), 'd')
			b = putStr(b, "n", m.Leader.Node)
			b = append(putInt(b, "s", int64(m.Leader.Shard)), 'e')
		}
		b = putStr(b, "n", m.Node)
		b = optDict(b, "r", &m.Result, appendResult)
		b = putUint(b, "t", m.TxID)
	case TypeHeartbeat:
		h := &m.Heartbeat
		b = append(appendBytes(b, "h"), 'd')
		b = putIDs(b, "f", h.Follows)
		b = putIDs(b, "l", h.Leads)
		b = putUint(b, "m", h.MapVersion)
		if len(h.Ready) > 0 {
			b = append(appendBytes(b, "r"), 'l')
			for _, r := range h.Ready {
				b = append(b, 'd')
				b = putInt(b, "n", int64(r.Count))
				b = putInt(b, "s", int64(r.Shard))
				b = append(putStr(b, "t", r.Topic), 'e')
			}
			b = append(b, 'e')
		}
		b = append(b, 'e')
		b = putInt(b, "l", m.Activity)
		b = putStr(b, "n", m.Node)
	default:
		return nil, fmt.Errorf("wire: encode: unknown message type %q", m.Type)
	}
	b = putStr(b, "y", string(m.Type))
	return append(b, 'e'), nil
}

// readerPool holds readers big enough for any datagram, so decoding reads
// from one buffer without copying the input again.
var readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, MaxMessageSize) }}

var decodeOptions = bencode.Options{
	MaxStringLength: MaxMessageSize,
	MaxDepth:        MaxDepth,
	MaxElements:     MaxElements,
	Strict:          true,
}

// Decode parses one datagram. Whatever the input, it returns an error
// wrapping ErrMalformed or ErrTooLarge rather than panicking, and allocates
// at most a small multiple of len(b).
//
// When the datagram is a query whose transaction id could be read but the
// rest is malformed, the returned Message carries Type and TxID, so that the
// receiver can send an error reply.
func Decode(b []byte) (m Message, err error) {
	if len(b) > MaxMessageSize {
		return Message{}, fmt.Errorf("%w: datagram of %d bytes exceeds %d", ErrTooLarge, len(b), MaxMessageSize)
	}
	v, err := decodeValue(b)
	if err != nil {
		return Message{}, err
	}
	top, ok := v.(map[string]any)
	if !ok {
		return Message{}, fmt.Errorf("%w: top level is a %s, want a dict", ErrMalformed, typeName(v))
	}
	var ferr error
	f := fields{d: top, err: &ferr}
	m.Type = Type(f.str("y", true))
	switch m.Type {
	case TypeQuery:
		m.TxID = f.uint("t", true)
		if ferr != nil {
			break
		}
		m.Op = Op(f.str("q", true))
		m.Client = f.str("c", false)
		m.Proof = f.str("p", false)
		m.Seq = f.uint("s", false)
		m.Ack = f.uint("k", false)
		m.Age = f.millis("g", MaxDuration)
		m.Timeout = f.millis("w", MaxTimeout)
		if a, ok := f.dict("a"); ok {
			m.Args = decodeArgs(a)
		}
	case TypeResponse, TypeError:
		m.TxID = f.uint("t", true)
		m.Node = f.str("n", true)
		m.Activity = f.int("l", false)
		if l, ok := f.dict("ld"); ok {
			m.Leader = &LeaderHint{Node: l.str("n", true), Shard: shard.ID(l.uint32("s", true))}
		}
		if r, ok := f.dict("r"); ok {
			m.Result = decodeResult(r)
		}
		if m.Type == TypeError {
			m.Err = decodeError(f)
		}
	case TypeHeartbeat:
		m.Node = f.str("n", true)
		m.Activity = f.int("l", false)
		if h, ok := f.dict("h"); ok {
			m.Heartbeat = Heartbeat{
				Leads:      shardIDs(h, "l"),
				Follows:    shardIDs(h, "f"),
				MapVersion: h.uint("m", false),
			}
			for i, e := range h.list("r", false) {
				rf, ok := h.elemDict(fmt.Sprintf("r[%d]", i), e)
				if !ok {
					break
				}
				m.Heartbeat.Ready = append(m.Heartbeat.Ready, ReadyCount{
					Shard: shard.ID(rf.uint32("s", true)), Topic: rf.str("t", true), Count: int(rf.uint32("n", true)),
				})
			}
		}
	default:
		if ferr == nil {
			ferr = fmt.Errorf("%w: unknown message type %q", ErrMalformed, m.Type)
		}
	}
	if ferr != nil {
		if m.Type == TypeQuery && m.TxID != 0 {
			return Message{Type: TypeQuery, TxID: m.TxID}, ferr
		}
		return Message{}, ferr
	}
	return m, nil
}

// decodeValue parses b as exactly one bencoded value within the limits.
// bencode-go can still panic on some inputs (see ../shared/NOTES.md), so a
// panic is turned into an error here, at the boundary.
func decodeValue(b []byte) (v any, err error) {
	br := readerPool.Get().(*bufio.Reader)
	br.Reset(bytes.NewReader(b))
	defer func() {
		if p := recover(); p != nil {
			v, err = nil, fmt.Errorf("%w: %v", ErrMalformed, p)
		}
		br.Reset(nil)
		readerPool.Put(br)
	}()
	opts := decodeOptions
	opts.MaxStringLength = int64(len(b)) // no string is longer than its datagram
	v, err = bencode.NewDecoderWithOptions(br, opts).Decode()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		return nil, fmt.Errorf("%w: trailing bytes after the message", ErrMalformed)
	}
	return v, nil
}

func decodeArgs(a fields) Args {
	return Args{
		Key:         a.str("k", false),
		Value:       a.str("v", false),
		Version:     a.uint("n", false),
		Stale:       a.uint("st", false) != 0,
		Topic:       a.str("tp", false),
		JobID:       a.str("j", false),
		Token:       a.uint("tk", false),
		Grant:       a.uint("gr", false),
		Lease:       a.millis("ls", MaxDuration),
		Delay:       a.millis("dl", MaxDuration),
		RunAt:       a.time("at"),
		MaxAttempts: int(a.uint32("ma", false)),
		Backoff:     a.millis("bo", MaxDuration),
		Unique:      a.str("u", false),
		Reason:      a.str("rs", false),
		Interval:    a.millis("iv", MaxDuration),
		Shards:      shardIDs(a, "sh"),
		Wait:        a.millis("wt", MaxDuration),
		Limit:       int(a.uint32("lm", false)),
		After:       a.uint("af", false),
		Batch:       decodeBatch(a),
	}
}

func decodeBatch(a fields) []BatchJob {
	var batch []BatchJob
	for i, e := range a.list("b", false) {
		f, ok := a.elemDict(fmt.Sprintf("b[%d]", i), e)
		if !ok {
			return nil
		}
		batch = append(batch, BatchJob{
			ID:          f.str("j", true),
			Topic:       f.str("tp", true),
			Payload:     f.str("v", false),
			Delay:       f.millis("dl", MaxDuration),
			RunAt:       f.time("at"),
			MaxAttempts: int(f.uint32("ma", false)),
			Backoff:     f.millis("bo", MaxDuration),
			Unique:      f.str("u", false),
		})
	}
	return batch
}

func decodeJob(f fields) JobInfo {
	return JobInfo{
		ID:          f.str("i", true),
		Topic:       f.str("tp", false),
		Payload:     f.str("p", false),
		Attempt:     int(f.uint32("a", false)),
		Token:       f.uint("tk", false),
		Grant:       f.uint("gr", false),
		Deadline:    f.time("dl"),
		State:       f.str("st", false),
		MaxAttempts: int(f.uint32("ma", false)),
		LastError:   f.str("er", false),
	}
}

func decodeError(f fields) *Error {
	l := f.list("e", true)
	if *f.err != nil {
		return nil
	}
	if len(l) != 2 {
		f.fail("e", "a list of [code, message]", l)
		return nil
	}
	code, ok := l[0].(int64)
	msg, ok2 := l[1].(string)
	if !ok || !ok2 {
		f.fail("e", "a list of [code, message]", l)
		return nil
	}
	return &Error{Code: Code(code), Message: msg}
}

func decodeResult(r fields) Result {
	res := Result{Value: r.str("v", false), Version: r.uint("n", false), Next: r.uint("nx", false)}
	if t, ok := r.dict("tp"); ok {
		topo := &Topology{}
		for i, n := range t.list("n", true) {
			nf, ok := t.elemDict(fmt.Sprintf("n[%d]", i), n)
			if !ok {
				break
			}
			topo.Nodes = append(topo.Nodes, NodeAddr{ID: nf.str("i", true), Addr: nf.str("a", true)})
		}
		if md, ok := t.dict("m"); ok {
			topo.Map = decodeMap(md)
		}
		res.Topology = topo
	}
	if s, ok := r.dict("st"); ok {
		st := &NodeStatus{ID: s.str("i", true), Activity: s.int("l", false)}
		for i, e := range s.list("s", false) {
			sf, ok := s.elemDict(fmt.Sprintf("s[%d]", i), e)
			if !ok {
				break
			}
			st.Shards = append(st.Shards, ShardStatus{
				ID:      shard.ID(sf.uint32("i", true)),
				State:   sf.str("s", false),
				Leader:  sf.str("l", false),
				Applied: sf.uint("a", false),
				Keys:    int(sf.int("k", false)),
			})
		}
		res.Status = st
	}
	if j, ok := r.dict("jb"); ok {
		job := decodeJob(j)
		res.Job = &job
	}
	if l := r.list("js", false); l != nil {
		res.Jobs = []JobInfo{}
		for i, e := range l {
			jf, ok := r.elemDict(fmt.Sprintf("js[%d]", i), e)
			if !ok {
				break
			}
			res.Jobs = append(res.Jobs, decodeJob(jf))
		}
	}
	if c, ok := r.dict("jc"); ok {
		res.Counts = &shard.JobCounts{
			Scheduled: int(c.uint32("s", false)), Ready: int(c.uint32("r", false)), Leased: int(c.uint32("l", false)),
			Dead: int(c.uint32("x", false)), Done: c.uint("d", false),
		}
	}
	return res
}

func decodeMap(f fields) *shard.Map {
	m := &shard.Map{Version: f.uint("v", true)}
	for i, e := range f.list("s", true) {
		sf, ok := f.elemDict(fmt.Sprintf("s[%d]", i), e)
		if !ok {
			return nil
		}
		s := shard.Shard{ID: shard.ID(sf.uint32("i", true))}
		for j, n := range sf.list("n", true) {
			id, ok := n.(string)
			if !ok {
				sf.fail(fmt.Sprintf("n[%d]", j), "a string", n)
				return nil
			}
			s.Replicas = append(s.Replicas, id)
		}
		m.Shards = append(m.Shards, s)
	}
	for i, e := range f.list("r", true) {
		rf, ok := f.elemDict(fmt.Sprintf("r[%d]", i), e)
		if !ok {
			return nil
		}
		m.Ranges = append(m.Ranges, shard.Range{
			Start: int(rf.uint32("a", true)),
			End:   int(rf.uint32("b", true)),
			Shard: shard.ID(rf.uint32("s", true)),
		})
	}
	if *f.err != nil {
		return nil
	}
	if err := m.Validate(); err != nil {
		*f.err = fmt.Errorf("%w: %s: %v", ErrMalformed, f.path, err)
		return nil
	}
	return m
}

func shardIDs(f fields, key string) []shard.ID {
	var ids []shard.ID
	for i, e := range f.list(key, false) {
		n, ok := e.(int64)
		if !ok || n < 0 || n > int64(^uint32(0)) {
			f.fail(fmt.Sprintf("%s[%d]", key, i), "a shard id", e)
			return nil
		}
		ids = append(ids, shard.ID(n))
	}
	return ids
}
