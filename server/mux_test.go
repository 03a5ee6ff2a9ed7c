package server

import (
	"net"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// A replica closes its raft store only after raft's connection handlers
// have let go of their connections: drain must end their reads and then
// wait for them, including a connection raft never accepted.
func TestStreamLayerDrainWaitsForHandlers(t *testing.T) {
	m, err := newMux(muxConfig{listen: "127.0.0.1:0", log: quietLogger, serveRPC: func(c net.Conn, _ string, _ time.Duration) { c.Close() }})
	if err != nil {
		t.Fatal(err)
	}
	defer m.close()
	m.dialer = &dialer{nodeAt: func(string) (string, bool) { return "n1", true }}
	sl, err := m.streamLayer(7)
	if err != nil {
		t.Fatal(err)
	}
	addr := raft.ServerAddress(m.ln.Addr().String())
	held, err := sl.Dial(addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	handled, err := sl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	// A second connection waits in deliver: nobody accepts it.
	waiting, err := sl.Dial(addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer waiting.Close()

	drained := make(chan struct{})
	go func() {
		sl.drain()
		close(drained)
	}()
	if _, err := handled.Read(make([]byte, 1)); err == nil {
		t.Fatal("read from a drained connection succeeded")
	}
	select {
	case <-drained:
		t.Fatal("drain returned while a handler still held its connection")
	default:
	}
	handled.Close()
	select {
	case <-drained:
	case <-time.After(5 * time.Second):
		t.Fatal("drain did not return after the handler closed its connection")
	}
	if _, err := sl.Accept(); err == nil {
		t.Fatal("a drained layer accepted a connection")
	}
}
