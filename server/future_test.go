package server

import (
	"io"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// blockingFSM holds every Apply until released, so that entries pile up in
// raft's queues.
type blockingFSM struct{ release chan struct{} }

func (f *blockingFSM) Apply(*raft.Log) interface{}         { <-f.release; return nil }
func (f *blockingFSM) Snapshot() (raft.FSMSnapshot, error) { return nil, io.EOF }
func (f *blockingFSM) Restore(io.ReadCloser) error         { return nil }

// A future whose entry is queued when raft shuts down never answers on its
// own (hashicorp/raft#498); awaitFuture must return anyway.
func TestFutureShutdownHook(t *testing.T) {
	conf := raft.DefaultConfig()
	conf.LocalID = "a"
	conf.HeartbeatTimeout = 50 * time.Millisecond
	conf.ElectionTimeout = 50 * time.Millisecond
	conf.LeaderLeaseTimeout = 50 * time.Millisecond
	conf.BatchApplyCh = true
	conf.Logger = newRaftLogger(quietLogger, "raft", 0)
	store := raft.NewInmemStore()
	snaps := raft.NewInmemSnapshotStore()
	addr, trans := raft.NewInmemTransport("a")
	if err := raft.BootstrapCluster(conf, store, store, snaps, trans,
		raft.Configuration{Servers: []raft.Server{{ID: "a", Address: addr}}}); err != nil {
		t.Fatal(err)
	}
	fsm := &blockingFSM{release: make(chan struct{})}
	r, err := raft.NewRaft(conf, fsm, store, store, snaps, trans)
	if err != nil {
		t.Fatal(err)
	}
	for r.State() != raft.Leader {
		time.Sleep(5 * time.Millisecond)
	}
	stop := make(chan struct{})
	var futures []raft.ApplyFuture
	for i := 0; i < 300; i++ { // more than raft's FSM queue holds
		f := r.Apply([]byte("x"), time.Second)
		if !hookShutdown(f, stop) {
			t.Fatalf("could not hook future %d (%T): awaitFuture no longer protects against hashicorp/raft#498", i, f)
		}
		futures = append(futures, f)
	}
	close(stop)
	r.Shutdown()
	close(fsm.release)
	var wg sync.WaitGroup
	for _, f := range futures {
		wg.Add(1)
		go func() { defer wg.Done(); _ = f.Error() }()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("futures still waiting 10s after shutdown")
	}
}
