package server

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/shard"
)

func validSpec() *Spec {
	return &Spec{
		Nodes: []NodeSpec{
			{ID: "a", Raft: "127.0.0.1:7000", Client: "127.0.0.1:7001"},
			{ID: "b", Raft: "127.0.0.1:7002", Client: "127.0.0.1:7003"},
			{ID: "c", Raft: "127.0.0.1:7004", Client: "127.0.0.1:7005"},
		},
		Shards: []shard.Shard{{ID: 0, Replicas: []string{"a", "b", "c"}}, {ID: 1, Replicas: []string{"b", "c"}}},
	}
}

func TestSpecValidate(t *testing.T) {
	if err := validSpec().Validate(); err != nil {
		t.Fatalf("valid spec: %v", err)
	}
	for name, mutate := range map[string]func(*Spec){
		"no nodes":                 func(s *Spec) { s.Nodes = nil },
		"no id":                    func(s *Spec) { s.Nodes[0].ID = "" },
		"id with a slash":          func(s *Spec) { s.Nodes[0].ID = "../a" },
		"id with a backslash":      func(s *Spec) { s.Nodes[0].ID = `a\b` },
		"id of a control char":     func(s *Spec) { s.Nodes[0].ID = "a\nb" },
		"id dot dot":               func(s *Spec) { s.Nodes[0].ID = ".." },
		"id too long":              func(s *Spec) { s.Nodes[0].ID = strings.Repeat("n", 129) },
		"duplicate id":             func(s *Spec) { s.Nodes[1].ID = "a" },
		"duplicate raft":           func(s *Spec) { s.Nodes[1].Raft = s.Nodes[0].Raft },
		"duplicate client":         func(s *Spec) { s.Nodes[1].Client = s.Nodes[0].Client },
		"no port":                  func(s *Spec) { s.Nodes[0].Raft = "127.0.0.1" },
		"unspecified raft host":    func(s *Spec) { s.Nodes[0].Raft = "0.0.0.0:7000" },
		"empty client host":        func(s *Spec) { s.Nodes[0].Client = ":7001" },
		"bad listen address":       func(s *Spec) { s.Nodes[0].RaftListen = "nowhere" },
		"unknown replica":          func(s *Spec) { s.Shards[1].Replicas = []string{"b", "z"} },
		"four replicas":            func(s *Spec) { s.Shards[0].Replicas = []string{"a", "b", "c", "a"} },
		"no shards":                func(s *Spec) { s.Shards = nil },
		"bad ranges":               func(s *Spec) { s.Ranges = []shard.Range{{Start: 0, End: 10, Shard: 0}} },
		"lease over heartbeat":     func(s *Spec) { s.Raft.LeaderLeaseTimeout = Duration(DefaultHeartbeatTimeout * 2) },
		"election under heartbeat": func(s *Spec) { s.Raft.ElectionTimeout = Duration(DefaultHeartbeatTimeout / 2) },
		"unknown log store":        func(s *Spec) { s.LogStore = "ext4" },
	} {
		s := validSpec()
		mutate(s)
		if err := s.Validate(); !errors.Is(err, ErrInvalidSpec) {
			t.Errorf("%s: Validate = %v, want ErrInvalidSpec", name, err)
		}
	}
}

func TestCheckNodeID(t *testing.T) {
	for _, id := range []string{"n1", "node-7.eu_west", "Ω", strings.Repeat("n", 128), "cab"} {
		if err := CheckNodeID(id); err != nil {
			t.Errorf("CheckNodeID(%q) = %v, want nil", id, err)
		}
	}
	for _, id := range []string{"", ".", "..", "a/b", `a\b`, "a\nb", strings.Repeat("n", 129), "ca", "CA"} {
		if err := CheckNodeID(id); !errors.Is(err, ErrInvalidSpec) {
			t.Errorf("CheckNodeID(%q) = %v, want ErrInvalidSpec", id, err)
		}
	}
}

// Unset raft timeouts follow the heartbeat timeout.
func TestRaftTimingDefaults(t *testing.T) {
	s := time.Second
	for _, tc := range []struct{ set, want RaftTiming }{
		{RaftTiming{}, RaftTiming{Duration(s), Duration(s), Duration(s), Duration(400 * time.Millisecond), DefaultSnapshotThreshold}},
		{RaftTiming{HeartbeatTimeout: Duration(2 * s)},
			RaftTiming{Duration(2 * s), Duration(2 * s), Duration(2 * s), Duration(800 * time.Millisecond), DefaultSnapshotThreshold}},
		{RaftTiming{HeartbeatTimeout: Duration(2 * s), ElectionTimeout: Duration(3 * s), LeaderLeaseTimeout: Duration(s), CommitTimeout: Duration(s), SnapshotThreshold: 5},
			RaftTiming{Duration(2 * s), Duration(3 * s), Duration(s), Duration(s), 5}},
	} {
		if got := tc.set.withDefaults(); got != tc.want {
			t.Errorf("%+v with defaults: %+v, want %+v", tc.set, got, tc.want)
		}
	}
}

func TestSpecSaveLoad(t *testing.T) {
	s := validSpec()
	s.Raft.HeartbeatTimeout = Duration(700 * 1e6)
	path := filepath.Join(t.TempDir(), "cluster.json")
	if err := s.Save(path); err != nil {
		t.Fatal(err)
	}
	got, err := LoadSpec(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, s) {
		t.Errorf("loaded %+v, saved %+v", got, s)
	}
	m, err := got.Map()
	if err != nil || m.Version != 1 || len(m.Ranges) != 2 || m.Ranges[1].End != shard.SlotCount {
		t.Errorf("Map() = %+v, %v", m, err)
	}
	if err := os.WriteFile(path, []byte(`{"nodes": [], "raft": {"heartbeat_timeout": 5}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSpec(path); !errors.Is(err, ErrInvalidSpec) {
		t.Errorf("a duration given as a number: %v", err)
	}
	if _, err := LoadSpec(filepath.Join(t.TempDir(), "missing.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}
