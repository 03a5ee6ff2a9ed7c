package server_test

import (
	"context"
	"errors"
	"net"
	"net/rpc"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/server"
	"github.com/shoal-kv/shoal/server/certs"
	"github.com/shoal-kv/shoal/server/servertest"
	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/shard/fsm"
	"github.com/shoal-kv/shoal/wire"
)

// oneStream is a raft.StreamLayer that dials with dial, for a transport
// that only sends.
type oneStream struct {
	dial   func() (net.Conn, error)
	closed chan struct{}
	once   *sync.Once
}

func (s oneStream) Accept() (net.Conn, error) { <-s.closed; return nil, net.ErrClosed }
func (s oneStream) Close() error              { s.once.Do(func() { close(s.closed) }); return nil }
func (s oneStream) Addr() net.Addr            { return &net.TCPAddr{} }
func (s oneStream) Dial(raft.ServerAddress, time.Duration) (net.Conn, error) {
	return s.dial()
}

// inject sends node to, over connections dial opens, an AppendEntries a
// thousand terms ahead carrying a write of key, and a TimeoutNow, as
// another replica of shard 0 would; it returns the first error.
func inject(t *testing.T, c *servertest.Cluster, to string, dial func() (net.Conn, error), key string) error {
	t.Helper()
	n := c.Node(to)
	r := server.Raft(n, 0)
	term := r.CurrentTerm() + 1000
	data, err := (&fsm.Command{Now: time.Now().UnixNano(), Ops: []fsm.Op{{Kind: fsm.KindSet, Key: key, Value: "v"}}}).Encode()
	if err != nil {
		t.Fatal(err)
	}
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: oneStream{dial: dial, closed: make(chan struct{}), once: new(sync.Once)}, MaxPool: 1, Timeout: 2 * time.Second,
		Logger: nil,
	})
	defer trans.Close()
	last := r.LastIndex()
	var resp raft.AppendEntriesResponse
	err = trans.AppendEntries(raft.ServerID(to), raft.ServerAddress(c.Spec().Node(to).Raft), &raft.AppendEntriesRequest{
		RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("n9"), Addr: []byte("127.0.0.1:1")},
		Term:      term, PrevLogEntry: last, PrevLogTerm: r.CurrentTerm(), LeaderCommitIndex: last + 1,
		Entries: []*raft.Log{{Index: last + 1, Term: term, Type: raft.LogCommand, Data: data}},
	}, &resp)
	var tn raft.TimeoutNowResponse
	err2 := trans.TimeoutNow(raft.ServerID(to), raft.ServerAddress(c.Spec().Node(to).Raft), &raft.TimeoutNowRequest{
		RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("n9"), Addr: []byte("127.0.0.1:1")},
	}, &tn)
	return errors.Join(err, err2)
}

// follower returns a running node that follows shard 0.
func follower(t *testing.T, c *servertest.Cluster) *server.Node {
	t.Helper()
	l := leader(t, c, 0)
	for _, id := range c.Running() {
		if id != l.ID() {
			return c.Node(id)
		}
	}
	t.Fatal("no follower")
	return nil
}

// The raft port takes raft traffic only over TLS from a node of the
// cluster: raft RPCs over plain TCP, as the port took them before, from a
// peer whose certificate another CA signed, or from one the cluster CA
// signed for a node not in the spec, change nothing. An insecure cluster
// (the control) takes the same injection.
func TestRaftInjectionRefused(t *testing.T) {
	t.Parallel()
	c := servertest.New(t, servertest.Options{})
	f := follower(t, c)
	to := f.ID()
	term := server.Raft(f, 0).CurrentTerm()
	spec := c.Spec()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	other, err := certs.NewCA("another CA")
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := other.Issue("n2")
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := c.CA().Issue("n9")
	if err != nil {
		t.Fatal(err)
	}
	for name, creds := range map[string]*server.PeerTLS{
		"plain TCP":           nil,
		"another CA's cert":   {Roots: c.CA().Pool(), Cert: foreign},
		"a non-member's cert": {Roots: c.CA().Pool(), Cert: stranger},
	} {
		dial := func() (net.Conn, error) { return server.DialRaft(ctx, spec, creds, to, 0) }
		if err := inject(t, c, to, dial, "injected"); err == nil {
			t.Errorf("%s: the injection was answered", name)
		}
		// The RPC service refuses them too.
		if conn, err := server.DialRPC(ctx, spec, creds, to); err == nil {
			cl := rpc.NewClient(conn)
			var reply server.ForwardReply
			if err := cl.Call("Node.Forward", server.ForwardRequest{Shard: 0, ReadIndex: true, Timeout: time.Second}, &reply); err == nil {
				t.Errorf("%s: a forward was answered: %+v", name, reply)
			}
			cl.Close()
		}
	}
	if got := server.Raft(f, 0).CurrentTerm(); got != term {
		t.Errorf("%s's term went from %d to %d", to, term, got)
	}
	cl := newClient(t, c, client.Config{})
	if _, err := cl.Get(ctx, "injected"); err == nil {
		t.Error("the injected key is readable")
	}

	// The control: the same injection over plain TCP moves an insecure
	// cluster's term.
	ic := servertest.New(t, servertest.Options{Insecure: true})
	inf := follower(t, ic)
	iterm := server.Raft(inf, 0).CurrentTerm()
	err = inject(t, ic, inf.ID(), func() (net.Conn, error) { return server.DialRaft(ctx, ic.Spec(), nil, inf.ID(), 0) }, "injected")
	if got := server.Raft(inf, 0).CurrentTerm(); got < iterm+1000 {
		t.Errorf("control: an insecure node's term went from %d to %d only (%v)", iterm, got, err)
	}
	// The insecure nodes' logs now differ: leave them to elect again
	// without the cleanup's check.
	for _, id := range ic.Running() {
		_ = ic.Kill(id)
	}
}

// Forward checks what a peer sends as the node checks a client's query:
// an oversized key, value or client id is refused, and a message over the
// bound on node-to-node RPC ends the connection, the node serving on.
func TestForwardRefusesOversizedArguments(t *testing.T) {
	t.Parallel()
	// The default timing: the test's forwards go to the leader it found,
	// which must not change on a loaded machine.
	c := servertest.New(t, servertest.Options{})
	l := leader(t, c, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dial := func() *rpc.Client {
		conn, err := server.DialRPC(ctx, c.Spec(), c.PeerTLS("n1"), l.ID())
		if err != nil {
			t.Fatal(err)
		}
		return rpc.NewClient(conn)
	}
	cl := dial()
	defer cl.Close()
	set := func(op fsm.Op) server.ForwardReply {
		t.Helper()
		var reply server.ForwardReply
		if err := cl.Call("Node.Forward", server.ForwardRequest{Shard: 0, Ops: []fsm.Op{op}, Timeout: time.Second}, &reply); err != nil {
			t.Fatal(err)
		}
		return reply
	}
	ok := fsm.Op{Kind: fsm.KindSet, Client: "fw", Seq: 1, Key: "k", Value: "v"}
	if r := set(ok); r.Err != "" {
		t.Fatalf("a valid forward: %s", r.Err)
	}
	for name, op := range map[string]fsm.Op{
		"a 5,000-byte key":        {Kind: fsm.KindSet, Client: "fw", Seq: 2, Key: strings.Repeat("k", 5000), Value: "v"},
		"a 1 MB value":            {Kind: fsm.KindSet, Client: "fw", Seq: 3, Key: "k", Value: strings.Repeat("v", 1<<20)},
		"a 100 KB client id":      {Kind: fsm.KindSet, Client: strings.Repeat("c", 100<<10), Seq: 4, Key: "k", Value: "v"},
		"a set carrying a topic":  {Kind: fsm.KindSet, Client: "fw", Seq: 5, Key: "k", Value: "v", Topic: "t"},
		"a tick":                  {Kind: fsm.KindTick},
		"a write with no session": {Kind: fsm.KindSet, Key: "k", Value: "v"},
	} {
		if r := set(op); r.Err == "" || r.Retry {
			t.Errorf("%s: %+v, want a final error", name, r.Err)
		}
	}
	var reply server.ForwardReply
	if err := cl.Call("Node.Forward", server.ForwardRequest{Shard: 0, ReadIndex: true,
		Keys: []string{strings.Repeat("k", shard.MaxKeySize+1)}, Timeout: time.Second}, &reply); err != nil || reply.Err == "" {
		t.Errorf("a read of an oversized key: %v %+v", err, reply)
	}
	// Over the message bound, the call fails on a closed connection.
	huge := fsm.Op{Kind: fsm.KindSet, Client: "fw", Seq: 6, Key: "k", Value: strings.Repeat("v", server.MaxRPCRequestSize)}
	if err := cl.Call("Node.Forward", server.ForwardRequest{Shard: 0, Ops: []fsm.Op{huge}, Timeout: time.Second}, &reply); err == nil {
		t.Errorf("a forward of %d bytes was answered: %+v", len(huge.Value), reply)
	}
	cl2 := dial()
	defer cl2.Close()
	reply = server.ForwardReply{}
	ok.Seq = 7
	if err := cl2.Call("Node.Forward", server.ForwardRequest{Shard: 0, Ops: []fsm.Op{ok}, Timeout: time.Second}, &reply); err != nil || reply.Err != "" {
		t.Errorf("a valid forward after an oversized one: %v %+v", err, reply)
	}
	// The UDP path bounds client ids alike.
	if err := wire.CheckQuery(&wire.Message{Op: wire.OpSet, Client: strings.Repeat("c", wire.MaxClientIDSize+1), Seq: 1,
		Args: wire.Args{Key: "k"}}); !errors.Is(err, shard.ErrTooLarge) {
		t.Errorf("an oversized client id: %v", err)
	}
}
