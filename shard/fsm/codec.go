package fsm

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// A command is a raft log entry: the replicas' own format, never seen by
// clients. It is binary and flat, since every replica decodes every entry
// on its hot path:
//
//	version byte (commandFormat)
//	varint Now
//	uvarint number of ops
//	per op: kind byte, then every field of Op in declaration order,
//	strings as uvarint length and bytes, unsigned integers as uvarints,
//	signed ones as varints.
//
// Format 3 adds, after Grant, Op.NextGrant as a uvarint and Op.Batch as a
// uvarint count and its ops, each as above (kind byte and fields, with an
// empty batch of its own). Encode writes format 3 only for a command that
// needs it (a KindCompleteAcquire or KindEnqueueBatch), and format 2
// otherwise, so that replicas not yet upgraded apply every other entry.
// Format 4 adds, after Batch, Op.Start and Op.End as varints; Encode
// writes it only for a command holding one (a slot move step).
// Format 2 has no NextGrant and no Batch; format 1 had no Op.Began and
// Op.Grant either: its ops decode with Began 0, as first attempts, and
// Grant 0, as leases granted before grants existed. Entries already in a
// log keep the format they were written in.
const (
	commandFormat   = 4
	commandFormatV3 = 3
	commandFormatV2 = 2
	commandFormatV1 = 1
)

// errBadCommand is returned (wrapped) for an entry that does not decode.
var errBadCommand = errors.New("fsm: bad command")

// Encode returns the serialized command for raft.Apply.
func (c *Command) Encode() ([]byte, error) {
	format := byte(commandFormatV2)
	for i := range c.Ops {
		op := &c.Ops[i]
		if op.NextGrant != 0 || len(op.Batch) > 0 {
			format = max(format, commandFormatV3)
		}
		if op.Start != 0 || op.End != 0 {
			format = commandFormat
		}
	}
	b := make([]byte, 0, 64+64*len(c.Ops))
	b = append(b, format)
	b = binary.AppendVarint(b, c.Now)
	b = binary.AppendUvarint(b, uint64(len(c.Ops)))
	return appendOps(b, c.Ops, format, 0)
}

// appendOps appends ops in format; depth is 1 for the ops of a batch,
// which may hold no batch of their own.
func appendOps(b []byte, ops []Op, format byte, depth int) ([]byte, error) {
	for i := range ops {
		op := &ops[i]
		if !op.Kind.valid() {
			return nil, fmt.Errorf("fsm: encode command: unknown %v", op.Kind)
		}
		if depth > 0 && len(op.Batch) > 0 {
			return nil, fmt.Errorf("fsm: encode command: a batch within a batch")
		}
		b = append(b, byte(op.Kind))
		b = appendString(b, op.Client)
		b = binary.AppendUvarint(b, op.Seq)
		b = binary.AppendUvarint(b, op.Ack)
		b = appendString(b, op.Key)
		b = appendString(b, op.Value)
		b = binary.AppendUvarint(b, op.Version)
		b = appendString(b, op.Topic)
		b = appendString(b, op.JobID)
		b = binary.AppendUvarint(b, op.Token)
		b = binary.AppendVarint(b, op.Lease)
		b = binary.AppendVarint(b, op.RunAt)
		b = binary.AppendVarint(b, op.Delay)
		b = binary.AppendVarint(b, int64(op.MaxAttempts))
		b = binary.AppendVarint(b, op.Backoff)
		b = appendString(b, op.Unique)
		b = appendString(b, op.Reason)
		b = binary.AppendVarint(b, op.Interval)
		b = binary.AppendVarint(b, op.Began)
		b = binary.AppendUvarint(b, op.Grant)
		if format >= commandFormatV3 {
			b = binary.AppendUvarint(b, op.NextGrant)
			b = binary.AppendUvarint(b, uint64(len(op.Batch)))
			var err error
			if b, err = appendOps(b, op.Batch, format, depth+1); err != nil {
				return nil, err
			}
		}
		if format >= commandFormat {
			b = binary.AppendVarint(b, int64(op.Start))
			b = binary.AppendVarint(b, int64(op.End))
		}
	}
	return b, nil
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// decoder reads a command, remembering the first error.
type decoder struct {
	b   []byte
	err error
	// bad is the error its failures wrap: errBadCommand if nil.
	bad error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		bad := d.bad
		if bad == nil {
			bad = errBadCommand
		}
		d.err = fmt.Errorf("%w: %s at %d bytes from the end", bad, what, len(d.b))
	}
}

func (d *decoder) byte() byte {
	if d.err != nil || len(d.b) == 0 {
		d.fail("truncated")
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad unsigned integer")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("bad integer")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) string() string {
	n := d.uvarint()
	if d.err != nil {
		return ""
	}
	if n > uint64(len(d.b)) {
		d.fail("string past the end")
		return ""
	}
	s := string(d.b[:n]) // a copy: the state machine keeps it
	d.b = d.b[n:]
	return s
}

// DecodeCommand parses a command produced by Encode.
func DecodeCommand(b []byte) (Command, error) {
	d := decoder{b: b}
	format := d.byte()
	if d.err == nil && (format < commandFormatV1 || format > commandFormat) {
		return Command{}, fmt.Errorf("%w: format %d, want %d to %d", errBadCommand, format, commandFormatV1, commandFormat)
	}
	c := Command{Now: d.varint()}
	c.Ops = d.ops(format, 0)
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing bytes")
	}
	if d.err != nil {
		return Command{}, d.err
	}
	return c, nil
}

// ops reads a count and that many ops of format; depth is 1 for the ops of
// a batch, which may hold none of their own.
func (d *decoder) ops(format byte, depth int) []Op {
	n := d.uvarint()
	// Every op takes at least 18 bytes: no count can exceed that bound.
	if d.err == nil && n > uint64(len(d.b)/18+1) {
		d.fail("op count past the end")
	}
	if d.err == nil && depth > 0 && n > MaxBatch {
		d.fail(fmt.Sprintf("a batch of %d ops, over %d", n, MaxBatch))
	}
	if d.err != nil || n == 0 {
		return nil
	}
	ops := make([]Op, n)
	for i := range ops {
		kind := Kind(d.byte())
		if d.err == nil && !kind.valid() {
			d.fail(fmt.Sprintf("unknown kind %d", kind))
		}
		if d.err != nil {
			return nil
		}
		ops[i] = Op{
			Kind: kind, Client: d.string(), Seq: d.uvarint(), Ack: d.uvarint(),
			Key: d.string(), Value: d.string(), Version: d.uvarint(),
			Topic: d.string(), JobID: d.string(), Token: d.uvarint(), Lease: d.varint(),
			RunAt: d.varint(), Delay: d.varint(), MaxAttempts: int(d.varint()), Backoff: d.varint(),
			Unique: d.string(), Reason: d.string(), Interval: d.varint(),
		}
		if format >= commandFormatV2 {
			ops[i].Began = d.varint()
			ops[i].Grant = d.uvarint()
		}
		if format >= commandFormatV3 {
			ops[i].NextGrant = d.uvarint()
			if depth > 0 {
				if d.uvarint() != 0 {
					d.fail("a batch within a batch")
				}
			} else {
				ops[i].Batch = d.ops(format, depth+1)
			}
		}
		if format >= commandFormat {
			ops[i].Start, ops[i].End = int(d.varint()), int(d.varint())
		}
	}
	return ops
}
