package wire

import (
	"strconv"
	"time"

	"github.com/shoal-kv/shoal/shard"
)

// Encoding is the easy half of bencode, and bencode-go's Marshal is slow at
// it: it formats every value through fmt and reflection (7 µs and 53
// allocations for a set request, a quarter of the benchmark client's CPU).
// So messages are appended straight into their datagram by the functions
// below. Decoding, the half that meets untrusted input, stays with
// bencode-go; TestEncodeIsCanonical holds this encoder to bencode-go's
// Marshal.
//
// A bencoded dict lists its keys sorted by their raw bytes, so every
// function that writes a dict writes its keys in that order: keep it when
// adding one.

// appendBytes appends a byte string.
func appendBytes(b []byte, s string) []byte {
	b = strconv.AppendInt(b, int64(len(s)), 10)
	b = append(b, ':')
	return append(b, s...)
}

// appendInt appends an integer.
func appendInt(b []byte, n int64) []byte {
	b = append(b, 'i')
	b = strconv.AppendInt(b, n, 10)
	return append(b, 'e')
}

// appendUint appends an unsigned integer.
func appendUint(b []byte, n uint64) []byte {
	b = append(b, 'i')
	b = strconv.AppendUint(b, n, 10)
	return append(b, 'e')
}

// putStr appends key and the string v.
func putStr(b []byte, key, v string) []byte { return appendBytes(appendBytes(b, key), v) }

// putInt appends key and the integer v.
func putInt(b []byte, key string, v int64) []byte { return appendInt(appendBytes(b, key), v) }

// putUint appends key and the unsigned integer v.
func putUint(b []byte, key string, v uint64) []byte { return appendUint(appendBytes(b, key), v) }

// putIDs appends key and a list of shard ids.
func putIDs(b []byte, key string, ids []shard.ID) []byte {
	b = append(appendBytes(b, key), 'l')
	for _, id := range ids {
		b = appendInt(b, int64(id))
	}
	return append(b, 'e')
}

// The opt functions leave out a field at its zero value, which the decoder
// reads back as that zero value.

func optStr(b []byte, key, v string) []byte {
	if v == "" {
		return b
	}
	return putStr(b, key, v)
}

func optUint(b []byte, key string, v uint64) []byte {
	if v == 0 {
		return b
	}
	return putUint(b, key, v)
}

// optMillis writes a duration in milliseconds, rounded up so that a short
// one does not read as none.
func optMillis(b []byte, key string, v time.Duration) []byte {
	if v <= 0 {
		return b
	}
	return putUint(b, key, uint64((v+time.Millisecond-1)/time.Millisecond))
}

// optTime writes a time as Unix milliseconds.
func optTime(b []byte, key string, t time.Time) []byte {
	if t.IsZero() {
		return b
	}
	return putInt(b, key, t.UnixMilli())
}

// optDict appends key and the dict that fill appends, or nothing if fill
// appends no entries.
func optDict[T any](b []byte, key string, v T, fill func([]byte, T) []byte) []byte {
	start := len(b)
	b = append(appendBytes(b, key), 'd')
	inner := len(b)
	if b = fill(b, v); len(b) == inner {
		return b[:start]
	}
	return append(b, 'e')
}

// appendArgs appends a query's arguments, without the dict's delimiters.
func appendArgs(b []byte, a *Args) []byte {
	b = optUint(b, "af", a.After)
	b = optTime(b, "at", a.RunAt)
	if len(a.Batch) > 0 {
		b = append(appendBytes(b, "b"), 'l')
		for i := range a.Batch {
			b = append(appendBatchJob(append(b, 'd'), &a.Batch[i]), 'e')
		}
		b = append(b, 'e')
	}
	b = optMillis(b, "bo", a.Backoff)
	b = optMillis(b, "dl", a.Delay)
	b = optUint(b, "gr", a.Grant)
	b = optMillis(b, "iv", a.Interval)
	b = optStr(b, "j", a.JobID)
	b = optStr(b, "k", a.Key)
	b = optUint(b, "lm", uint64(a.Limit))
	b = optMillis(b, "ls", a.Lease)
	b = optUint(b, "ma", uint64(a.MaxAttempts))
	b = optUint(b, "n", a.Version)
	b = optStr(b, "rs", a.Reason)
	if len(a.Shards) > 0 {
		b = putIDs(b, "sh", a.Shards)
	}
	if a.Stale {
		b = putInt(b, "st", 1)
	}
	b = optUint(b, "tk", a.Token)
	b = optStr(b, "tp", a.Topic)
	b = optStr(b, "u", a.Unique)
	b = optStr(b, "v", a.Value)
	return optMillis(b, "wt", a.Wait)
}

// appendResult appends a reply's result, without the dict's delimiters.
func appendResult(b []byte, r *Result) []byte {
	if r.Job != nil {
		b = append(appendBytes(b, "jb"), 'd')
		b = append(appendJob(b, r.Job), 'e')
	}
	if c := r.Counts; c != nil {
		b = append(appendBytes(b, "jc"), 'd')
		b = putUint(b, "d", c.Done)
		b = putInt(b, "l", int64(c.Leased))
		b = putInt(b, "r", int64(c.Ready))
		b = putInt(b, "s", int64(c.Scheduled))
		b = append(putInt(b, "x", int64(c.Dead)), 'e')
	}
	if r.Jobs != nil {
		b = append(appendBytes(b, "js"), 'l')
		for i := range r.Jobs {
			b = append(appendJob(append(b, 'd'), &r.Jobs[i]), 'e')
		}
		b = append(b, 'e')
	}
	b = optUint(b, "n", r.Version)
	b = optUint(b, "nx", r.Next)
	if s := r.Status; s != nil {
		b = append(appendBytes(b, "st"), 'd')
		b = putStr(b, "i", s.ID)
		b = putInt(b, "l", s.Activity)
		b = append(appendBytes(b, "s"), 'l')
		for _, sh := range s.Shards {
			b = append(b, 'd')
			b = putUint(b, "a", sh.Applied)
			b = putInt(b, "i", int64(sh.ID))
			b = putInt(b, "k", int64(sh.Keys))
			b = putStr(b, "l", sh.Leader)
			b = append(putStr(b, "s", sh.State), 'e')
		}
		b = append(b, 'e', 'e')
	}
	if t := r.Topology; t != nil {
		b = append(appendBytes(b, "tp"), 'd')
		if t.Map != nil {
			b = append(appendBytes(b, "m"), 'd')
			b = append(appendMap(b, t.Map), 'e')
		}
		b = append(appendBytes(b, "n"), 'l')
		for _, n := range t.Nodes {
			b = append(b, 'd')
			b = putStr(b, "a", n.Addr)
			b = append(putStr(b, "i", n.ID), 'e')
		}
		b = append(b, 'e', 'e')
	}
	return optStr(b, "v", r.Value)
}

// appendBatchJob appends a job of a batch, without the dict's delimiters.
func appendBatchJob(b []byte, j *BatchJob) []byte {
	b = optTime(b, "at", j.RunAt)
	b = optMillis(b, "bo", j.Backoff)
	b = optMillis(b, "dl", j.Delay)
	b = putStr(b, "j", j.ID)
	b = optUint(b, "ma", uint64(j.MaxAttempts))
	b = putStr(b, "tp", j.Topic)
	b = optStr(b, "u", j.Unique)
	return optStr(b, "v", j.Payload)
}

// BatchJobSize returns the bytes j takes in an OpEnqueueBatch query.
func BatchJobSize(j *BatchJob) int { return len(appendBatchJob(nil, j)) + 2 }

// appendJob appends a job, without the dict's delimiters.
func appendJob(b []byte, j *JobInfo) []byte {
	b = optUint(b, "a", uint64(j.Attempt))
	b = optTime(b, "dl", j.Deadline)
	b = optStr(b, "er", j.LastError)
	b = optUint(b, "gr", j.Grant)
	b = optStr(b, "i", j.ID)
	b = optUint(b, "ma", uint64(j.MaxAttempts))
	b = optStr(b, "p", j.Payload)
	b = optStr(b, "st", j.State)
	b = optUint(b, "tk", j.Token)
	return optStr(b, "tp", j.Topic)
}

// appendMap appends a shard map, without the dict's delimiters; decodeMap
// reads it back.
func appendMap(b []byte, m *shard.Map) []byte {
	b = append(appendBytes(b, "r"), 'l')
	for _, r := range m.Ranges {
		b = append(b, 'd')
		b = putInt(b, "a", int64(r.Start))
		b = putInt(b, "b", int64(r.End))
		b = append(putInt(b, "s", int64(r.Shard)), 'e')
	}
	b = append(b, 'e')
	b = append(appendBytes(b, "s"), 'l')
	for _, s := range m.Shards {
		b = putInt(append(b, 'd'), "i", int64(s.ID))
		b = append(appendBytes(b, "n"), 'l')
		for _, r := range s.Replicas {
			b = appendBytes(b, r)
		}
		b = append(b, 'e', 'e')
	}
	b = append(b, 'e')
	return putUint(b, "v", m.Version)
}
