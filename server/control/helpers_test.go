package control

import (
	"errors"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/shoal-kv/shoal/shard"
)

// newCluster returns version 1 metadata: members, shards shards of
// replicas voters spread evenly over holders (NewEvenMap), the control
// group on control.
func newCluster(t testing.TB, members, holders []string, shards, replicas int, control []string) *shard.Cluster {
	t.Helper()
	m, err := shard.NewEvenMap(holders, shards, replicas)
	if err != nil {
		t.Fatal(err)
	}
	c := &shard.Cluster{Version: 1, Map: m, Control: control}
	for _, id := range members {
		c.Nodes = append(c.Nodes, node(id))
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return c
}

// node returns a member with addresses made from its id.
func node(id string) shard.Node {
	return shard.Node{ID: id, Raft: id + ":7000", Client: id + ":7001"}
}

// fourNodes is a b c d with shard 0 on a b c, 1 on b c d, 2 on c d a, and
// the control group on a b c.
func fourNodes(t testing.TB) *shard.Cluster {
	ids := []string{"a", "b", "c", "d"}
	return newCluster(t, ids, ids, 3, 3, []string{"a", "b", "c"})
}

// encode returns cmd as log entry data.
func encode(t testing.TB, cmd Command) []byte {
	t.Helper()
	b, err := cmd.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// mustApply applies cmd through f as entry index and fails unless it is
// accepted.
func mustApply(t testing.TB, f *FSM, index uint64, cmd Command) *shard.Cluster {
	t.Helper()
	r := f.Apply(&raft.Log{Index: index, Type: raft.LogCommand, Data: encode(t, cmd)}).(Result)
	if r.Err != nil {
		t.Fatalf("%s %+v: %v", cmd.Kind, cmd, r.Err)
	}
	return r.Cluster
}

// change returns a clone of c changed by edit, which must still validate.
func change(t testing.TB, c *shard.Cluster, edit func(*shard.Cluster)) *shard.Cluster {
	t.Helper()
	d := c.Clone()
	edit(d)
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	return d
}

// isRejected reports whether err is a refusal.
func isRejected(err error) bool { return errors.Is(err, ErrRejected) }
