package server

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// sleepyStore is an in-memory raft store whose log writes take d.
type sleepyStore struct {
	*raft.InmemStore
	d time.Duration
}

func (s *sleepyStore) StoreLogs(logs []*raft.Log) error {
	time.Sleep(s.d)
	return s.InmemStore.StoreLogs(logs)
}

func TestSlowDiskStoreWarns(t *testing.T) {
	var out bytes.Buffer
	log := slog.New(slog.NewTextHandler(&out, nil))
	slow := &slowDiskStore{raftStore: &sleepyStore{raft.NewInmemStore(), 20 * time.Millisecond}, log: log, slow: 5 * time.Millisecond}
	if err := slow.StoreLog(&raft.Log{Index: 1, Term: 1}); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); !strings.Contains(got, "level=WARN") || !strings.Contains(got, "slow disk: writing raft log entries") ||
		!strings.Contains(got, "entries=1") {
		t.Errorf("a 20ms write against a 5ms limit logged %q", got)
	}
	var l raft.Log
	if err := slow.GetLog(1, &l); err != nil || l.Index != 1 {
		t.Errorf("the entry written through the wrapper reads back as %+v, %v", l, err)
	}

	out.Reset()
	fast := &slowDiskStore{raftStore: raft.NewInmemStore(), log: log, slow: time.Hour}
	if err := fast.StoreLogs([]*raft.Log{{Index: 1, Term: 1}}); err != nil {
		t.Fatal(err)
	}
	if err := fast.SetUint64([]byte("CurrentTerm"), 2); err != nil {
		t.Fatal(err)
	}
	if err := fast.DeleteRange(1, 1); err != nil {
		t.Fatal(err)
	}
	if out.Len() != 0 {
		t.Errorf("writes within the limit logged %q", out.String())
	}
}
