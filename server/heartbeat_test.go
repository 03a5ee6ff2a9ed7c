package server_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/server"
	"github.com/shoal-kv/shoal/server/servertest"
	"github.com/shoal-kv/shoal/wire"
)

// A heartbeat stays within MaxHeartbeatSize however many topics have jobs
// ready, and long their names: its ready report lists the most ready
// topics first, and skips those too long for the room left, for shorter
// ones. (Before, 40 ready topics of 1,000 bytes made each heartbeat 32 KiB:
// a 41-byte ping drew 3.9 MB over the 30 s it subscribed its sender.)
func TestHeartbeatsStaySmall(t *testing.T) {
	t.Parallel()
	c := servertest.New(t, servertest.Options{Nodes: 1, Shards: 1, Replicas: 1, Raft: failoverTiming})
	cl := newClient(t, c, client.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	enqueue := func(topic string, jobs int) {
		for range jobs {
			if _, err := cl.Enqueue(ctx, topic, nil, client.EnqueueOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := range 40 {
		enqueue(fmt.Sprintf("%03d%s", i, strings.Repeat("x", 997)), 1)
	}
	for i := range 60 {
		enqueue(fmt.Sprintf("s%02d", i), 1)
	}
	enqueue("hot", 3)

	rc := newRawClient(t, c, clientAddr(c, "n1"))
	rc.send(&wire.Message{Type: wire.TypeQuery, Op: wire.OpPing})
	timeout := time.After(10 * time.Second)
	for {
		var hb rawHeartbeat
		select {
		case hb = <-rc.heartbeats:
		case <-timeout:
			t.Fatal("no heartbeat reported the hot topic first")
		}
		if hb.size > server.MaxHeartbeatSize {
			t.Fatalf("a heartbeat of %d bytes, over %d: %d ready entries", hb.size, server.MaxHeartbeatSize, len(hb.Heartbeat.Ready))
		}
		ready := hb.Heartbeat.Ready
		if len(ready) == 0 || ready[0].Topic != "hot" || ready[0].Count != 3 {
			continue // not every job applied yet
		}
		for _, r := range ready {
			if len(r.Topic) > 100 {
				t.Errorf("a heartbeat reported topic %.10s… of %d bytes, which cannot fit", r.Topic, len(r.Topic))
			}
		}
		if len(ready) < 20 {
			t.Errorf("a heartbeat of %d bytes reported %d ready topics, want the room filled with the short ones", hb.size, len(ready))
		}
		t.Logf("a heartbeat of %d bytes reported %d of 101 ready topics", hb.size, len(ready))
		return
	}
}

// Only a valid query, its op known and its arguments good, makes its
// sender a recent client, heartbeated for ClientTTL; and the node
// heartbeats at most MaxHeartbeatClients of them, a new one taking the
// place of the one heard from least recently.
func TestHeartbeatClients(t *testing.T) {
	t.Parallel()
	c := servertest.New(t, servertest.Options{Nodes: 1, Shards: 1, Replicas: 1, Raft: failoverTiming,
		Configure: func(cfg *server.Config) { cfg.MaxHeartbeatClients = 2 }})
	n := c.Node("n1")
	rcs := []*rawClient{newRawClient(t, c, clientAddr(c, "n1")), newRawClient(t, c, clientAddr(c, "n1")), newRawClient(t, c, clientAddr(c, "n1"))}
	for _, tc := range []struct {
		name string
		m    wire.Message
		want wire.Code
	}{
		{"unknown op", wire.Message{Type: wire.TypeQuery, Op: "frob"}, wire.CodeUnknownOp},
		{"get without a key", wire.Message{Type: wire.TypeQuery, Op: wire.OpGet}, wire.CodeBadRequest},
		{"set without a client", wire.Message{Type: wire.TypeQuery, Op: wire.OpSet, Args: wire.Args{Key: "k"}}, wire.CodeBadRequest},
	} {
		if r, _ := rcs[0].do(&tc.m, time.Second); r.Type != wire.TypeError || r.Err.Code != tc.want {
			t.Errorf("%s: %+v, want error %d", tc.name, r.Err, tc.want)
		}
	}
	if got := server.HeartbeatClients(n); got != 0 {
		t.Errorf("after invalid queries only, the node heartbeats %d clients, want none", got)
	}
	for i, rc := range rcs {
		if r, _ := rc.do(&wire.Message{Type: wire.TypeQuery, Op: wire.OpPing}, time.Second); r.Type != wire.TypeResponse {
			t.Fatalf("ping %d: %+v", i, r.Err)
		}
	}
	if got := server.HeartbeatClients(n); got != 2 {
		t.Errorf("after three pings the node heartbeats %d clients, want its cap, 2", got)
	}
	if got := n.Counters().HeartbeatClientsEvicted; got != 1 {
		t.Errorf("%d recent clients evicted, want 1", got)
	}
	select {
	case <-rcs[2].heartbeats:
	case <-time.After(10 * time.Second):
		t.Error("the last client to ping got no heartbeat")
	}
}
