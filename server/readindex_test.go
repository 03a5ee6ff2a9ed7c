package server

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// A term call that runs out of time resets the connection, so that calls
// to a peer that stopped reading do not pile up on it.
func TestTermCallTimeoutResetsTheConnection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c // and never answer
		}
	}()
	d := &dialer{nodeAt: func(string) (string, bool) { return "silent", true }}
	p := newPeers(func(string) (string, bool) { return ln.Addr().String(), true }, d, time.Second, peerIdleTimeout/2)
	defer p.close()
	for i := 0; i < 2; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		_, err := p.termOf(ctx, "silent", 0)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("call %d to a silent peer: %v, want a deadline error", i, err)
		}
		var c net.Conn
		select {
		case c = <-accepted:
		case <-time.After(5 * time.Second):
			t.Fatalf("call %d did not dial a connection of its own", i)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Fatalf("call %d: the connection did not end cleanly: %v", i, err)
		}
		c.Close()
	}
}
