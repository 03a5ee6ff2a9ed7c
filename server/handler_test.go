package server_test

import (
	"math"
	"net/netip"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/server"
	"github.com/shoal-kv/shoal/server/servertest"
	"github.com/shoal-kv/shoal/wire"
)

// A node whose MaxInFlight requests are all running refuses a set as busy,
// yet still answers the queries that wait on nothing: stale gets, pings.
func TestImmediateQueriesAnsweredWhileBusy(t *testing.T) {
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 1, Replicas: 3,
		Configure: func(cfg *server.Config) { cfg.MaxInFlight = 1 }})
	n := c.Node("n1")
	addr := clientAddr(c, "n1")
	set := func(seq uint64, timeout time.Duration) wire.Message {
		return request(t, c, addr, &wire.Message{Type: wire.TypeQuery, Op: wire.OpSet, Client: "busy-test", Seq: seq,
			Timeout: timeout, Args: wire.Args{Key: "k", Value: "v"}})
	}
	if r := set(1, 0); r.Type != wire.TypeResponse {
		t.Fatalf("set: %+v", r.Err)
	}
	waitConverged(t, c)

	// A set that waits for a leader takes the one slot, once the last set
	// has let go of it (only after its reply is sent): with the other two
	// replicas gone, the shard has none.
	servertest.WaitFor(t, 10*time.Second, "the last set letting go of its slot", func() bool { return server.InFlight(n) == 0 })
	kill(t, c, "n2")
	kill(t, c, "n3")
	waiting := make(chan wire.Message, 1)
	go func() {
		r, err := rawRequest(c, addr, &wire.Message{Type: wire.TypeQuery, Op: wire.OpSet, Client: "busy-test", Seq: 2,
			Timeout: 2 * time.Second, Args: wire.Args{Key: "k", Value: "w"}})
		if err != nil {
			t.Error(err)
		}
		waiting <- r
	}()
	servertest.WaitFor(t, 10*time.Second, "the set taking the slot", func() bool { return server.InFlight(n) != 0 })
	if r := set(100, 0); r.Type != wire.TypeError || r.Err.Code != wire.CodeUnavailable {
		t.Fatalf("a set while another waits: %+v %+v, want busy", r.Result, r.Err)
	}
	busy := n.Counters().Busy

	get := request(t, c, addr, &wire.Message{Type: wire.TypeQuery, Op: wire.OpGet, Args: wire.Args{Key: "k", Stale: true}})
	if get.Type != wire.TypeResponse || get.Result.Value != "v" {
		t.Errorf("stale get while busy: %+v %+v, want v", get.Result, get.Err)
	}
	if ping := request(t, c, addr, &wire.Message{Type: wire.TypeQuery, Op: wire.OpPing}); ping.Type != wire.TypeResponse {
		t.Errorf("ping while busy: %+v", ping.Err)
	}
	if got := n.Counters().Busy; got != busy {
		t.Errorf("busy refusals went from %d to %d while answering a stale get and a ping", busy, got)
	}
	if r := <-waiting; r.Type != wire.TypeError || r.Err.Code != wire.CodeUnavailable {
		t.Errorf("a set with no leader: %+v %+v, want unavailable", r.Result, r.Err)
	}
}

// slowReader hands each datagram on only after a pause, as a busy receive
// loop would get to it late.
type slowReader struct {
	wire.Transport
	pause time.Duration
}

func (s slowReader) Receive(buf []byte) (int, netip.AddrPort, time.Time, error) {
	n, from, arrived, err := s.Transport.Receive(buf)
	time.Sleep(s.pause)
	return n, from, arrived, err
}

// The time a query waits to be read counts in the activity the node
// reports, as if the node had been working on it from its arrival. A
// transport that cannot tell when a datagram arrived (a zero time) counts
// no wait.
func TestWaitToBeReadCountsAsActivity(t *testing.T) {
	const tau, pause = 250 * time.Millisecond, 200 * time.Millisecond
	for _, tc := range []struct {
		name      string
		wrap      func(wire.Transport) wire.Transport
		low, high float64 // bounds on the reported activity, in requests
	}{
		// One request in progress over the last 200 ms: 1−e^(−0.8) ≈ 0.55.
		{"read late", func(u wire.Transport) wire.Transport { return slowReader{u, pause} },
			0.9 * (1 - math.Exp(-pause.Seconds()/tau.Seconds())), 1},
		{"arrival unknown", func(u wire.Transport) wire.Transport { return unknownArrival{u} }, 0, 0.1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := servertest.New(t, servertest.Options{Nodes: 1, Shards: 1, Replicas: 1,
				Transport: func(n server.NodeSpec) (wire.Transport, error) {
					u, err := wire.ListenUDP(n.Client)
					if err != nil {
						return nil, err
					}
					return tc.wrap(u), nil
				},
				Configure: func(cfg *server.Config) { cfg.LoadTimeConstant = tau }})
			addr := clientAddr(c, "n1")
			get := request(t, c, addr, &wire.Message{Type: wire.TypeQuery, Op: wire.OpGet, Args: wire.Args{Key: "k", Stale: true}})
			if got := float64(get.Activity) / 1000; got < tc.low || got > tc.high {
				t.Errorf("a stale get reported activity %.3f, want %.3f to %.3f", got, tc.low, tc.high)
			}
		})
	}
}

// unknownArrival reports no arrival time.
type unknownArrival struct{ wire.Transport }

func (u unknownArrival) Receive(buf []byte) (int, netip.AddrPort, time.Time, error) {
	n, from, _, err := u.Transport.Receive(buf)
	return n, from, time.Time{}, err
}
