package fsm

import (
	"fmt"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/shoal-kv/shoal/shard"
)

// BenchmarkApplySet is the state machine's cost of one replicated set from
// a client session, decoding the log entry included: keys cycle over
// 100,000, values are 100 bytes, and each set acknowledges the one before.
func BenchmarkApplySet(b *testing.B) {
	value := string(make([]byte, 100))
	logs := make([]*raft.Log, b.N)
	for i := range logs {
		c := Command{Now: 1767225600000000000, Ops: []Op{{Kind: KindSet, Client: "3f9ac2d1e0b4a7c6",
			Seq: uint64(i + 1), Ack: uint64(i), Key: fmt.Sprintf("k%08d", i*97%100000), Value: value}}}
		data, err := c.Encode()
		if err != nil {
			b.Fatal(err)
		}
		logs[i] = &raft.Log{Type: raft.LogCommand, Index: uint64(i + 1), Term: 1, Data: data}
	}
	f := New(Config{})
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if r, ok := f.Apply(logs[i]).([]Result); !ok || r[0].Status != StatusOK {
			b.Fatalf("apply %d: %#v", i, r)
		}
	}
}

// BenchmarkExportInstall is the cost of moving half the slots of a shard
// holding 100,000 keys of 100 bytes: the freeze at the source, the export
// in chunks of 512 KiB, their installs at the target and its activation.
// It reports the bytes of the chunks shipped.
func BenchmarkExportInstall(b *testing.B) {
	value := string(make([]byte, 100))
	var shipped int
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		src, dst := newApplier(b), newApplier(b)
		for k := 0; k < 100_000; k++ {
			src.fsm.rev++
			src.fsm.kv[fmt.Sprintf("k%08d", k)] = Entry{Value: value, Version: src.fsm.rev}
		}
		b.StartTimer()
		if st := src.freeze(1, 0, shard.SlotCount/2); st != StatusOK {
			b.Fatal(st)
		}
		chunks := src.export(1, 512<<10)
		shipped = 0
		for _, c := range chunks {
			shipped += len(c)
			if st := dst.slotOp(KindInstallSlots, 1, string(c)); st != StatusOK {
				b.Fatal(st)
			}
		}
		if st := dst.slotOp(KindActivateSlots, 1, ""); st != StatusOK {
			b.Fatal(st)
		}
	}
	b.ReportMetric(float64(shipped), "chunk-bytes")
}
