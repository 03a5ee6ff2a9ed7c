package control

import (
	"bytes"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/shoal-kv/shoal/shard"
)

// FuzzApply applies arbitrary log entries (the input split at newlines)
// after an init: no entry panics, every state installed validates, and
// Version grows by exactly one per change.
func FuzzApply(f *testing.F) {
	seeds := []Command{
		{Kind: KindAddNode, Node: &shard.Node{ID: "e", Raft: "e:1", Client: "e:2"}},
		{Kind: KindStartMove, Move: &shard.Move{Group: 0, From: "a", To: "d"}},
		{Kind: KindFinishMove, Move: &shard.Move{Group: 0, From: "a", To: "d"}},
		{Kind: KindCancelMove, Move: &shard.Move{Group: shard.ControlGroup, From: "a", To: "d"}},
		{Kind: KindDrainNode, ID: "c"},
		{Kind: KindDropNode, ID: "c"},
		{Kind: KindInit, Cluster: &shard.Cluster{Version: 5}},
		{Kind: KindStartSlotMove, SlotMove: &shard.SlotMove{From: 0, To: 1, Start: 0, End: 10}},
		{Kind: KindAbortSlotMoves, Slots: &SlotMoves{From: 0}},
	}
	var all [][]byte
	for _, s := range seeds {
		b := encode(f, s)
		f.Add(b)
		all = append(all, b)
	}
	f.Add(bytes.Join(all, []byte("\n")))
	f.Add([]byte(`{"kind":"start-move","move":{"group":4294967295,"from":"c","to":"d"}}` + "\n" +
		`{"kind":"finish-move","move":{"group":4294967295,"from":"c","to":"d"}}` + "\n" +
		`{"kind":"drain-node","id":"d"}`))
	f.Add([]byte(`{"kind":"add-node","node":{}}`))
	f.Add([]byte("\x00{]"))
	init := encode(f, Command{Kind: KindInit, Cluster: fourNodes(f)})

	f.Fuzz(func(t *testing.T, data []byte) {
		fsm := NewFSM()
		fsm.Apply(&raft.Log{Index: 1, Data: init})
		prev := fsm.Current()
		for i, entry := range bytes.Split(data, []byte("\n")) {
			r := fsm.Apply(&raft.Log{Index: uint64(i + 2), Data: entry}).(Result)
			cur := fsm.Current()
			if r.Cluster != cur {
				t.Fatalf("entry %q: result is not the current state", entry)
			}
			if r.Err != nil || cur == prev {
				if cur != prev {
					t.Fatalf("entry %q refused (%v) but changed the state", entry, r.Err)
				}
				continue
			}
			if err := cur.Validate(); err != nil {
				t.Fatalf("entry %q installed an invalid state: %v", entry, err)
			}
			if cur.Version != prev.Version+1 {
				t.Fatalf("entry %q: version %d after %d", entry, cur.Version, prev.Version)
			}
			prev = cur
		}
	})
}
