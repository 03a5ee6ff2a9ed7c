package fsm

import (
	"fmt"
	"testing"

	"github.com/hashicorp/raft"
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
