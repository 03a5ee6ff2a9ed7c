package fsm

import (
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"testing"
)

func sampleCommand() Command {
	return Command{Now: 1767225600123456789, Ops: []Op{
		{Kind: KindSet, Client: "c1", Seq: 9, Ack: 7, Key: "k\x00", Value: "v\xff", Version: 3},
		{Kind: KindEnqueue, Client: "c2", Seq: 1 << 40, Topic: "mail", JobID: "j0a3.x", Value: "payload",
			RunAt: -5, Delay: 1e9, MaxAttempts: 25, Backoff: 2e9, Unique: "u", Began: 1767225599000000000},
		{Kind: KindFail, JobID: "j", Token: 77, Grant: 0x9e3779b97f4a7c15, Reason: "boom", Lease: 30e9, Interval: 60e9},
		{Kind: KindTick},
	}}
}

func TestCommandRoundTrip(t *testing.T) {
	for kind := KindSet; kind < kindEnd; kind++ {
		c := Command{Now: 1, Ops: []Op{{Kind: kind}}}
		b, err := c.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if got, err := DecodeCommand(b); err != nil || got.Ops[0].Kind != kind {
			t.Errorf("kind %s: %+v, %v", kind, got, err)
		}
	}
	c := sampleCommand()
	b, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeCommand(b)
	if err != nil || !reflect.DeepEqual(got, c) {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	if _, err := (&Command{Ops: []Op{{Kind: kindEnd}}}).Encode(); err == nil {
		t.Error("encoded an unknown kind")
	}
}

// The raft log holds commands for good: the encoding of a command, kind
// codes included, never changes within a format, and a new format decodes
// the entries of the old. These bytes were written by format 2, which
// added Op.Began and Op.Grant to format 1 (below).
func TestCommandEncodingIsStable(t *testing.T) {
	const golden = "02aab4aed5be94b9863104010263310907026b000276ff0300000000000000000000000000040263328080808080200000077061796c6f616400046d61696c066a3061332e7800000980a8d6b9073280d0acf30e0175000080d8f9a5b694b98631000800000000000000016a4d80b09dc2df01000000000004626f6f6d80e0ba84bf030095f8a9fa97b7de9b9e010d00000000000000000000000000000000000000"
	c := sampleCommand()
	b, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(b); got != golden {
		t.Errorf("sample command encodes as\n%s\nwant\n%s", got, golden)
	}
	// One op of each kind of format 2, in the order of their codes.
	const kinds = "020a0d0101630100026b300000000000000000000000000000000201630200026b310000000000000000000000000000000301630300026b320000000000000000000000000000000401630400026b330000000000000000000000000000000501630500026b340000000000000000000000000000000601630600026b350000000000000000000000000000000701630700026b360000000000000000000000000000000801630800026b370000000000000000000000000000000901630900026b380000000000000000000000000000000a01630a00026b390000000000000000000000000000000b01630b00036b31300000000000000000000000000000000c01630c00036b31310000000000000000000000000000000d01630d00036b3132000000000000000000000000000000"
	var ops []Op
	for kind := KindSet; kind <= KindTick; kind++ {
		i := int(kind - KindSet)
		ops = append(ops, Op{Kind: kind, Client: "c", Seq: uint64(i + 1), Key: fmt.Sprint("k", i)})
	}
	if b, err = (&Command{Now: 5, Ops: ops}).Encode(); err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(b); got != kinds {
		t.Errorf("one op of each kind encodes as\n%s\nwant\n%s", got, kinds)
	}
}

// Format 3 is written only for the commands that need it, and its
// encoding is as stable: these bytes were written by it.
func TestCommandFormat3(t *testing.T) {
	c := Command{Now: 5, Ops: []Op{
		{Kind: KindCompleteAcquire, Client: "c", Seq: 1, JobID: "j", Token: 3, Grant: 4, Topic: "t", Lease: 1e9, NextGrant: 5},
		{Kind: KindEnqueueBatch, Client: "c", Seq: 2, Batch: []Op{
			{Kind: KindEnqueue, JobID: "a", Topic: "t", Value: "x"},
			{Kind: KindEnqueue, JobID: "b", Topic: "t", Unique: "u"},
		}},
	}}
	b, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	const golden = "030a020e016301000000000174016a0380a8d6b90700000000000000000405000f016302000000000000000000000000000000000000020400000000017800017401610000000000000000000000000004000000000000017401620000000000000175000000000000"
	if got := hex.EncodeToString(b); got != golden {
		t.Errorf("format 3 command encodes as\n%s\nwant\n%s", got, golden)
	}
	if got, err := DecodeCommand(b); err != nil || !reflect.DeepEqual(got, c) {
		t.Errorf("round trip: %+v, %v", got, err)
	}
	if b, _ := (&Command{Now: 1, Ops: sampleCommand().Ops}).Encode(); b[0] != commandFormatV2 {
		t.Errorf("a command without format 3 fields is written in format %d, want %d", b[0], commandFormatV2)
	}
	nested := Command{Ops: []Op{{Kind: KindEnqueueBatch, Batch: []Op{{Kind: KindEnqueueBatch, Batch: []Op{{Kind: KindEnqueue}}}}}}}
	if _, err := nested.Encode(); err == nil {
		t.Error("encoded a batch within a batch")
	}
}

// TestCommandFormat4: only a command holding a slot range is written in
// format 4, and it round-trips.
func TestCommandFormat4(t *testing.T) {
	c := Command{Now: 5, Ops: []Op{
		{Kind: KindFreezeSlots, Version: 7, Start: 10, End: 20},
		{Kind: KindEnqueueBatch, Client: "c", Seq: 2, Batch: []Op{{Kind: KindEnqueue, JobID: "a", Topic: "t"}}},
	}}
	b, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if b[0] != commandFormat {
		t.Errorf("a freeze is written in format %d, want %d", b[0], commandFormat)
	}
	if got, err := DecodeCommand(b); err != nil || !reflect.DeepEqual(got, c) {
		t.Errorf("round trip: %+v, %v", got, err)
	}
	for _, op := range []Op{{Kind: KindDropSlots, Version: 7}, {Kind: KindInstallSlots, Version: 7, Value: "chunk"}} {
		if b, _ := (&Command{Ops: []Op{op}}).Encode(); b[0] != commandFormatV2 {
			t.Errorf("%v is written in format %d, want %d", op.Kind, b[0], commandFormatV2)
		}
	}
}

// Entries of format 1, the first, which had no Op.Began, decode as they
// did: these bytes were written by it (its first version named kinds with
// strings).
func TestCommandFormat1Decodes(t *testing.T) {
	const golden = "01aab4aed5be94b9863104010263310907026b000276ff030000000000000000000000040263328080808080200000077061796c6f616400046d61696c066a3061332e7800000980a8d6b9073280d0acf30e017500000800000000000000016a4d80b09dc2df01000000000004626f6f6d80e0ba84bf030d0000000000000000000000000000000000"
	want := sampleCommand()
	want.Ops[1].Began, want.Ops[2].Grant = 0, 0
	b, _ := hex.DecodeString(golden)
	if got, err := DecodeCommand(b); err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("format 1 sample decodes as %+v, %v; want %+v", got, err, want)
	}
	const kinds = "010a0d0101630100026b30000000000000000000000000000201630200026b31000000000000000000000000000301630300026b32000000000000000000000000000401630400026b33000000000000000000000000000501630500026b34000000000000000000000000000601630600026b35000000000000000000000000000701630700026b36000000000000000000000000000801630800026b37000000000000000000000000000901630900026b38000000000000000000000000000a01630a00026b39000000000000000000000000000b01630b00036b3130000000000000000000000000000c01630c00036b3131000000000000000000000000000d01630d00036b313200000000000000000000000000"
	b, _ = hex.DecodeString(kinds)
	got, err := DecodeCommand(b)
	if err != nil || len(got.Ops) != int(KindTick-KindSet+1) {
		t.Fatalf("format 1 kinds decode as %+v, %v", got, err)
	}
	for i, op := range got.Ops {
		if want := (Op{Kind: KindSet + Kind(i), Client: "c", Seq: uint64(i + 1), Key: fmt.Sprint("k", i)}); !reflect.DeepEqual(op, want) {
			t.Errorf("format 1 op %d decodes as %+v, want %+v", i, op, want)
		}
	}
}

func TestDecodeCommandRejects(t *testing.T) {
	good, _ := (&Command{Now: 5, Ops: []Op{{Kind: KindSet, Key: "k"}}}).Encode()
	for name, b := range map[string][]byte{
		"empty":         nil,
		"wrong format":  {9},
		"truncated":     good[:len(good)-3],
		"trailing":      append(append([]byte(nil), good...), 0),
		"unknown kind":  append(append([]byte(nil), good[:3]...), 99),
		"huge op count": {commandFormatV3, 0, 0xff, 0xff, 0xff, 0xff, 0x0f},
		"nested batch": {commandFormatV3, 0, 1, byte(KindEnqueueBatch), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
			1, byte(KindEnqueue), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0},
		"string too far": append(append([]byte(nil), good[:4]...), 0xff, 0x01),
	} {
		if _, err := DecodeCommand(b); !errors.Is(err, errBadCommand) {
			t.Errorf("%s: %v, want errBadCommand", name, err)
		}
	}
}

// FuzzDecodeCommand: no input panics the decoder or makes it allocate
// beyond its size, and what decodes survives a round trip.
func FuzzDecodeCommand(f *testing.F) {
	c := sampleCommand()
	b, _ := c.Encode()
	f.Add(b)
	f.Add([]byte{commandFormatV3, 0, 1, 1})
	f.Add([]byte{commandFormatV3, 0, 1, byte(KindEnqueueBatch), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
		1, byte(KindEnqueue), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeCommand(b)
		if err != nil {
			return
		}
		again, err := c.Encode()
		if err != nil {
			t.Fatalf("decoded %+v does not encode: %v", c, err)
		}
		if c2, err := DecodeCommand(again); err != nil || !reflect.DeepEqual(c2, c) {
			t.Fatalf("round trip of %x changed %+v to %+v (%v)", b, c, c2, err)
		}
	})
}

func BenchmarkDecodeCommand(b *testing.B) {
	c := Command{Now: 1767225600000000000, Ops: []Op{{Kind: KindAcquire, Client: "3f9ac2d1e0b4a7c6", Seq: 12345, Ack: 12340, Topic: "t17", Lease: 30e9}}}
	data, _ := c.Encode()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := DecodeCommand(data); err != nil {
			b.Fatal(err)
		}
	}
}
