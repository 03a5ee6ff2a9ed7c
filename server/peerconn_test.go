package server

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/shoal-kv/shoal/shard/fsm"
	"github.com/shoal-kv/shoal/wire"
)

// An accepted raft connection reads at most its limit between two
// responses, except the data of a snapshot, which follows a request
// opening with rpcInstallSnapshot.
func TestRaftConnBoundsARequest(t *testing.T) {
	for _, tc := range []struct {
		name  string
		first byte
		ok    bool
	}{
		{"an append", 0, false},
		{"a snapshot", rpcInstallSnapshot, true},
	} {
		client, server := net.Pipe()
		c := newRaftConn(server, time.Minute)
		c.limit = 1 << 10
		go func() {
			msg := bytes.Repeat([]byte{9}, 4<<10)
			msg[0] = tc.first
			_, _ = client.Write(msg)
			client.Close()
		}()
		_, err := io.Copy(io.Discard, c)
		if tc.ok != (err == nil) || !tc.ok && !errors.Is(err, errMessageTooLarge) {
			t.Errorf("%s of 4 KiB through a 1 KiB bound: %v", tc.name, err)
		}
		server.Close()
	}
	// A response resets the count.
	client, server := net.Pipe()
	defer client.Close()
	c := newRaftConn(server, time.Minute)
	c.limit = 1 << 10
	go func() {
		for i := 0; i < 4; i++ {
			_, _ = client.Write(bytes.Repeat([]byte{1}, 1<<10))
			_, _ = client.Read(make([]byte, 1))
		}
	}()
	for i := 0; i < 4; i++ {
		if _, err := io.ReadFull(c, make([]byte, 1<<10)); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if _, err := c.Write([]byte{0}); err != nil {
			t.Fatal(err)
		}
	}
}

// A node closes a raft connection that sends nothing for its idle
// timeout; the dialing side, before writing on a connection left unused
// for half that, replaces it, so the write reaches the peer.
func TestIdleRaftConnectionsAreReplaced(t *testing.T) {
	const idle = 200 * time.Millisecond
	m, err := newMux(muxConfig{listen: "127.0.0.1:0", log: quietLogger, serveRPC: func(c net.Conn, _ string, _ time.Duration) { c.Close() }, idle: idle})
	if err != nil {
		t.Fatal(err)
	}
	defer m.close()
	m.dialer = &dialer{nodeAt: func(string) (string, bool) { return "n1", true }}
	sl, err := m.streamLayer(7)
	if err != nil {
		t.Fatal(err)
	}
	defer sl.drain()
	conn, err := sl.Dial(raft.ServerAddress(m.ln.Addr().String()), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	first, err := sl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write([]byte("a")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	b := make([]byte, 1)
	if _, err := first.Read(b); err != nil || b[0] != 'a' {
		t.Fatalf("first read: %q %v", b, err)
	}
	var ne net.Error
	if _, err := first.Read(b); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("an idle connection's read: %v, want a timeout", err)
	}
	if waited := time.Since(start); waited < idle {
		t.Errorf("closed after %v, before the idle timeout %v", waited, idle)
	}
	first.Close()
	if _, err := conn.Write([]byte("b")); err != nil {
		t.Fatalf("a write after the peer closed the idle connection: %v", err)
	}
	second, err := sl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if _, err := second.Read(b); err != nil || b[0] != 'b' {
		t.Fatalf("the write after the idle time reached %q, %v", b, err)
	}
}

// Every op a client's query makes passes the checks of a forward; a field
// its kind does not carry, or a kind no query makes, does not.
func TestCheckStateOp(t *testing.T) {
	for op, kind := range commandKinds {
		m := wire.Message{Op: op, Client: "c", Seq: 2, Ack: 1, Args: wire.Args{Key: "k", Value: "v", Topic: "t",
			JobID: "j", Unique: "u", Lease: time.Second, Interval: time.Second, Shards: nil, RunAt: time.Unix(5, 0),
			Batch: []wire.BatchJob{{ID: "j", Topic: "t", Unique: "u", Payload: "p", RunAt: time.Unix(5, 0), Delay: time.Second}}}}
		if err := wire.CheckQuery(&m); err != nil {
			t.Fatalf("%s: %v", op, err)
		}
		sop := stateOp(&m)
		if sop.Kind != kind {
			t.Fatalf("%s: kind %d", op, sop.Kind)
		}
		if kind == fsm.KindCompleteAcquire {
			sop.NextGrant = 5 // drawn by the proposing node
		}
		if err := checkStateOp(sop); err != nil {
			t.Errorf("%s: %v", op, err)
		}
	}
	enqueue := fsm.Op{Kind: fsm.KindEnqueue, JobID: "j", Topic: "t"}
	for name, op := range map[string]fsm.Op{
		"a set with a job id":          {Kind: fsm.KindSet, Client: "c", Seq: 1, Key: "k", JobID: "j"},
		"a tick":                       {Kind: fsm.KindTick},
		"a complete with a next grant": {Kind: fsm.KindComplete, Client: "c", Seq: 1, JobID: "j", NextGrant: 5},
		"an enqueue with a batch": {Kind: fsm.KindEnqueue, Client: "c", Seq: 1, JobID: "j", Topic: "t",
			Batch: []fsm.Op{enqueue}},
		"a batch of a set": {Kind: fsm.KindEnqueueBatch, Client: "c", Seq: 1,
			Batch: []fsm.Op{{Kind: fsm.KindSet, JobID: "j", Topic: "t"}}},
		"a batch job with a session": {Kind: fsm.KindEnqueueBatch, Client: "c", Seq: 1,
			Batch: []fsm.Op{{Kind: fsm.KindEnqueue, Client: "c", Seq: 1, JobID: "j", Topic: "t"}}},
		"a batch within a batch": {Kind: fsm.KindEnqueueBatch, Client: "c", Seq: 1,
			Batch: []fsm.Op{{Kind: fsm.KindEnqueue, JobID: "j", Topic: "t", Batch: []fsm.Op{enqueue}}}},
		"a batch too long": {Kind: fsm.KindEnqueueBatch, Client: "c", Seq: 1,
			Batch: make([]fsm.Op, wire.MaxBatchJobs+1)},
		"a long reason": {Kind: fsm.KindFail, Client: "c", Seq: 1, JobID: "j", Reason: string(make([]byte, 2000))},
	} {
		if err := checkStateOp(op); err == nil {
			t.Errorf("%s passed", name)
		}
	}
}

// Connections still in their handshake take at most maxPendingConns
// places: past them a new connection takes the place of the one pending
// longest, which is closed, so connections held idle cannot keep a peer's
// new one out; once they go, the places are free again.
func TestPendingConnectionsAreCapped(t *testing.T) {
	m, err := newMux(muxConfig{listen: "127.0.0.1:0", log: quietLogger, serveRPC: func(c net.Conn, _ string, _ time.Duration) { c.Close() }})
	if err != nil {
		t.Fatal(err)
	}
	defer m.close()
	addr := m.ln.Addr().String()
	pending := func() int {
		m.mu.Lock()
		defer m.mu.Unlock()
		return len(m.pending)
	}
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range maxPendingConns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		waitFor(t, "the connection pending", func() bool { return pending() == len(held) })
	}
	extra, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	// The oldest is closed to make room; the new one waits for its
	// handshake.
	_ = held[0].SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := held[0].Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the connection pending longest: %v, want it closed", err)
	}
	_ = extra.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := extra.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the new connection: %v, want it held for its handshake", err)
	}
	if got := pending(); got != maxPendingConns {
		t.Errorf("%d pending, want %d", got, maxPendingConns)
	}
	for _, c := range held {
		c.Close()
	}
	held = nil
	extra.Close()
	waitFor(t, "no connection pending", func() bool { return pending() == 0 })
}

// waitFor polls cond until it holds, failing the test after 5 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
