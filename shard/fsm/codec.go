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
// Format 1 had no Op.Began and Op.Grant: its ops decode with Began 0, as
// first attempts, and Grant 0, as leases granted before grants existed. Entries already in a log keep the format they were written in.
const (
	commandFormat   = 2
	commandFormatV1 = 1
)

// errBadCommand is returned (wrapped) for an entry that does not decode.
var errBadCommand = errors.New("fsm: bad command")

// Encode returns the serialized command for raft.Apply.
func (c *Command) Encode() ([]byte, error) {
	b := make([]byte, 0, 64+64*len(c.Ops))
	b = append(b, commandFormat)
	b = binary.AppendVarint(b, c.Now)
	b = binary.AppendUvarint(b, uint64(len(c.Ops)))
	for i := range c.Ops {
		op := &c.Ops[i]
		if !op.Kind.valid() {
			return nil, fmt.Errorf("fsm: encode command: unknown %v", op.Kind)
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
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s at %d bytes from the end", errBadCommand, what, len(d.b))
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
	if d.err == nil && format != commandFormat && format != commandFormatV1 {
		return Command{}, fmt.Errorf("%w: format %d, want %d or %d", errBadCommand, format, commandFormatV1, commandFormat)
	}
	c := Command{Now: d.varint()}
	n := d.uvarint()
	// Every op takes at least 18 bytes: no count can exceed that bound.
	if d.err == nil && n > uint64(len(d.b)/18+1) {
		d.fail("op count past the end")
	}
	if d.err != nil {
		return Command{}, d.err
	}
	c.Ops = make([]Op, n)
	for i := range c.Ops {
		kind := Kind(d.byte())
		if d.err == nil && !kind.valid() {
			d.fail(fmt.Sprintf("unknown kind %d", kind))
		}
		if d.err != nil {
			return Command{}, d.err
		}
		c.Ops[i] = Op{
			Kind: kind, Client: d.string(), Seq: d.uvarint(), Ack: d.uvarint(),
			Key: d.string(), Value: d.string(), Version: d.uvarint(),
			Topic: d.string(), JobID: d.string(), Token: d.uvarint(), Lease: d.varint(),
			RunAt: d.varint(), Delay: d.varint(), MaxAttempts: int(d.varint()), Backoff: d.varint(),
			Unique: d.string(), Reason: d.string(), Interval: d.varint(),
		}
		if format == commandFormat {
			c.Ops[i].Began = d.varint()
			c.Ops[i].Grant = d.uvarint()
		}
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing bytes")
	}
	if d.err != nil {
		return Command{}, d.err
	}
	return c, nil
}
