package server

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/wire"
)

// The recent-clients table holds at most its cap: a new address past it
// takes the place of the one heard from least recently, and only that
// counts as an eviction, not an address whose ttl had run out.
func TestClientsTableIsCapped(t *testing.T) {
	addr := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), port) }
	t0 := time.Unix(1000, 0)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	c := newClients(3, time.Minute)
	c.touch(addr(1), at(0))
	c.touch(addr(2), at(1))
	c.touch(addr(3), at(2))
	c.touch(addr(1), at(3)) // heard again: now the most recent
	c.touch(addr(4), at(4)) // past the cap: 2 goes
	if got, want := c.recent(at(5)), []netip.AddrPort{addr(4), addr(1), addr(3)}; !slices.Equal(got, want) {
		t.Errorf("recent: %v, want %v", got, want)
	}
	if got := c.evictions(); got != 1 {
		t.Errorf("%d evictions, want 1", got)
	}

	// 3 lapses at 62s: making room for 5 then evicts nothing.
	c.touch(addr(5), at(63))
	if got := c.evictions(); got != 1 {
		t.Errorf("%d evictions after replacing a lapsed address, want 1", got)
	}
	if got, want := c.recent(at(65)), []netip.AddrPort{addr(5)}; !slices.Equal(got, want) {
		t.Errorf("recent after 1 and 4 lapsed: %v, want %v", got, want)
	}

	// A flood of new addresses leaves the table at its cap.
	for p := range 1000 {
		c.touch(addr(uint16(100+p)), at(66))
	}
	if got := len(c.recent(at(66))); got != 3 {
		t.Errorf("%d recent clients after a flood, want the cap, 3", got)
	}
	if got := c.evictions(); got != 1+998 {
		t.Errorf("%d evictions after 1,000 new addresses into a table of 3 holding 1, want %d", got, 1+998)
	}
}

// readyEntrySize and readyListSize are the bytes wire encodes a ready
// report in, which readyReports counts on to keep heartbeats within
// maxHeartbeatSize.
func TestReadySizesMatchTheEncoding(t *testing.T) {
	hb := wire.Message{Type: wire.TypeHeartbeat, Node: "n1", Activity: 12}
	hb.Heartbeat.Leads = []shard.ID{0, 7}
	empty, err := wire.Encode(&hb)
	if err != nil {
		t.Fatal(err)
	}
	want := len(empty) + readyListSize
	for i, r := range []wire.ReadyCount{
		{Shard: 0, Topic: "t", Count: 1},
		{Shard: 7, Topic: "emails", Count: readyCap},
		{Shard: 4095, Topic: strings.Repeat("x", 1024), Count: 57},
		{Shard: 123456, Topic: strings.Repeat("y", 99), Count: 0},
	} {
		hb.Heartbeat.Ready = append(hb.Heartbeat.Ready, r)
		want += readyEntrySize(r)
		b, err := wire.Encode(&hb)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) != want {
			t.Errorf("with %d entries the heartbeat takes %d bytes, readyEntrySize predicts %d", i+1, len(b), want)
		}
	}
	if got := readyEntrySize(wire.ReadyCount{Topic: "x"}); got != minReadyEntrySize {
		t.Errorf("the smallest entry takes %d bytes, minReadyEntrySize says %d", got, minReadyEntrySize)
	}
}

// BenchmarkClientsTouch measures recording a query from a new address in
// a full recent-clients table, which evicts one: the per-datagram cost a
// flood of addresses puts on the receive loop.
func BenchmarkClientsTouch(b *testing.B) {
	c := newClients(DefaultMaxHeartbeatClients, DefaultClientTTL)
	ip := netip.MustParseAddr("10.0.0.1")
	now := time.Now()
	for i := range DefaultMaxHeartbeatClients {
		c.touch(netip.AddrPortFrom(ip, uint16(i)), now)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		c.touch(netip.AddrPortFrom(ip, uint16(DefaultMaxHeartbeatClients+i)), now)
	}
}
