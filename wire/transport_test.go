package wire

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// receiveAll collects datagrams from t until none arrives for quiet.
func receiveAll(t Transport, quiet time.Duration) []string {
	out := make(chan string, 1<<16)
	go func() {
		buf := make([]byte, MaxDatagramSize)
		for {
			n, _, _, err := t.Receive(buf)
			if err != nil {
				close(out)
				return
			}
			out <- string(buf[:n])
		}
	}()
	var got []string
	for {
		select {
		case s := <-out:
			got = append(got, s)
		case <-time.After(quiet):
			t.Close()
			for range out {
			}
			return got
		}
	}
}

// udpPair opens two UDP transports on loopback.
func udpPair(t *testing.T) (*UDP, *UDP) {
	t.Helper()
	a, err := ListenUDP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b, err := ListenUDP("127.0.0.1:0")
	if err != nil {
		a.Close()
		t.Fatal(err)
	}
	return a, b
}

func TestUDPSendReceive(t *testing.T) {
	a, b := udpPair(t)
	defer a.Close()
	if err := a.Send([]byte("hello"), b.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	n, from, _, err := b.Receive(buf)
	if err != nil || string(buf[:n]) != "hello" || from != a.LocalAddr() {
		t.Fatalf("Receive = %q from %v, %v; want hello from %v", buf[:n], from, err, a.LocalAddr())
	}
	// A value of the maximum size fits one datagram.
	big := make([]byte, MaxDatagramSize)
	if err := a.Send(big, b.LocalAddr()); err != nil {
		t.Fatalf("sending %d bytes: %v", len(big), err)
	}
	buf = make([]byte, MaxDatagramSize+1)
	if n, _, _, err := b.Receive(buf); err != nil || n != MaxDatagramSize {
		t.Fatalf("received %d bytes, %v", n, err)
	}
	// Close unblocks a waiting Receive.
	done := make(chan error, 1)
	go func() { _, _, _, err := b.Receive(buf); done <- err }()
	b.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Errorf("Receive after Close = %v, want net.ErrClosed", err)
	}
}

// A datagram that waited for its reader reports when it arrived, not when
// it was read: the kernel's stamp on Linux, the queueing time on a SimNet
// and behind Faulty.
func TestReceiveReportsArrival(t *testing.T) {
	const wait = 50 * time.Millisecond
	pairs := map[string]func(t *testing.T) (Transport, Transport){
		"simnet": func(t *testing.T) (Transport, Transport) { return simPair(t, NewSimNet(1)) },
		"faulty": func(t *testing.T) (Transport, Transport) {
			a, b := simPair(t, NewSimNet(1))
			fb, err := WithFaults(b, Faults{}, 1)
			if err != nil {
				t.Fatal(err)
			}
			return a, fb
		},
		"udp": func(t *testing.T) (Transport, Transport) {
			a, b := udpPair(t)
			if !b.stamps {
				a.Close()
				b.Close()
				t.Skipf("the kernel does not stamp arrivals on %s", runtime.GOOS)
			}
			return a, b
		},
	}
	for name, pair := range pairs {
		t.Run(name, func(t *testing.T) {
			a, b := pair(t)
			defer a.Close()
			defer b.Close()
			// Linux turns receive stamping on for the whole system a moment
			// after a socket asks for it; until then it stamps a datagram
			// when it is read. So a few tries are allowed.
			var sent, arrived, read time.Time
			buf := make([]byte, 16)
			for try := 0; try < 20; try++ {
				sent = time.Now()
				if err := a.Send([]byte("x"), b.LocalAddr()); err != nil {
					t.Fatal(err)
				}
				time.Sleep(wait)
				var n int
				var err error
				n, _, arrived, err = b.Receive(buf)
				read = time.Now()
				if err != nil || n != 1 {
					t.Fatalf("Receive: %d bytes, %v", n, err)
				}
				// The wall clock, which kernel stamps use, has a coarser
				// resolution than the monotonic one on some systems.
				const slack = 5 * time.Millisecond
				if !arrived.Before(sent.Add(-slack)) && read.Sub(arrived) >= wait-slack {
					return
				}
			}
			t.Errorf("sent at %v, read %v later, arrived %v after sending; want arrival at sending",
				sent, read.Sub(sent), arrived.Sub(sent))
		})
	}
}

func TestParseAddr(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:7000":          "127.0.0.1:7000",
		"[::ffff:127.0.0.1]:7000": "127.0.0.1:7000",
		"localhost:7000":          "127.0.0.1:7000",
	} {
		got, err := ParseAddr(in)
		if err != nil || got.String() != want {
			t.Errorf("ParseAddr(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	if _, err := ParseAddr("no-port"); err == nil {
		t.Error("ParseAddr accepted an address without a port")
	}
}

func TestFaultsValidate(t *testing.T) {
	for _, f := range []Faults{{Drop: -0.1}, {Duplicate: 1.5}, {Reorder: 2}, {Delay: -1}, {Jitter: -1}} {
		if f.Validate() == nil {
			t.Errorf("%+v accepted", f)
		}
	}
}

func simPair(t *testing.T, n *SimNet) (*SimEndpoint, *SimEndpoint) {
	t.Helper()
	a, err := n.Listen(netip.AddrPort{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := n.Listen(netip.AddrPort{})
	if err != nil {
		t.Fatal(err)
	}
	return a, b
}

func sendN(t *testing.T, from Transport, to netip.AddrPort, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if err := from.Send([]byte(fmt.Sprint(i)), to); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSimNetPerfectLink(t *testing.T) {
	n := NewSimNet(1)
	a, b := simPair(t, n)
	defer a.Close()
	sendN(t, a, b.LocalAddr(), 100)
	got := receiveAll(b, 50*time.Millisecond)
	if len(got) != 100 {
		t.Fatalf("received %d of 100", len(got))
	}
	for i, s := range got {
		if s != fmt.Sprint(i) {
			t.Fatalf("datagram %d is %q: a perfect link reordered", i, s)
		}
	}
	if _, err := n.Listen(a.LocalAddr()); err == nil {
		t.Error("listened twice on one address")
	}
}

func TestSimNetDropIsSeeded(t *testing.T) {
	run := func(seed int64) []string {
		n := NewSimNet(seed)
		if err := n.SetDefaultFaults(Faults{Drop: 0.3}); err != nil {
			t.Fatal(err)
		}
		a, b := simPair(t, n)
		defer a.Close()
		sendN(t, a, b.LocalAddr(), 2000)
		return receiveAll(b, 50*time.Millisecond)
	}
	first, second, other := run(7), run(7), run(8)
	if fmt.Sprint(first) != fmt.Sprint(second) {
		t.Error("the same seed dropped different datagrams")
	}
	if fmt.Sprint(first) == fmt.Sprint(other) {
		t.Error("different seeds dropped the same datagrams")
	}
	// 1400 expected, sd about 20.
	if len(first) < 1300 || len(first) > 1500 {
		t.Errorf("delivered %d of 2000 at 30%% drop", len(first))
	}
}

func TestSimNetDuplicateDelayReorder(t *testing.T) {
	n := NewSimNet(3)
	a, b := simPair(t, n)
	defer a.Close()
	if err := n.SetFaults(a.LocalAddr(), b.LocalAddr(), Faults{Duplicate: 0.2, Reorder: 0.2, Delay: time.Millisecond, Jitter: time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	sendN(t, a, b.LocalAddr(), 500)
	got := receiveAll(b, 100*time.Millisecond)
	if len(got) <= 500 || len(got) > 700 {
		t.Errorf("received %d datagrams for 500 sent with 20%% duplication", len(got))
	}
	seen := map[string]int{}
	inversions := 0
	prev := -1
	for _, s := range got {
		seen[s]++
		var i int
		fmt.Sscan(s, &i)
		if i < prev {
			inversions++
		}
		prev = i
	}
	if len(seen) != 500 {
		t.Errorf("%d distinct datagrams arrived, want all 500", len(seen))
	}
	if inversions == 0 {
		t.Error("nothing was reordered")
	}
	if time.Since(start) < time.Millisecond {
		t.Error("no delay")
	}
	st := n.Stats()
	if st.Sent != 500 || st.Duplicated == 0 || st.Delivered != uint64(len(got)) {
		t.Errorf("stats %+v for %d received", st, len(got))
	}
}

func TestSimNetPartition(t *testing.T) {
	n := NewSimNet(1)
	a, b := simPair(t, n)
	c, err := n.Listen(netip.AddrPort{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	defer c.Close()
	n.Partition([]netip.AddrPort{a.LocalAddr()}, []netip.AddrPort{b.LocalAddr()})
	sendN(t, a, b.LocalAddr(), 10)
	sendN(t, c, b.LocalAddr(), 1)
	if got := receiveAll(b, 30*time.Millisecond); len(got) != 1 {
		t.Errorf("b received %v across a partition", got)
	}
	b, err = n.Listen(b.LocalAddr()) // b restarts on its address
	if err != nil {
		t.Fatal(err)
	}
	n.Isolate(c.LocalAddr())
	sendN(t, c, b.LocalAddr(), 3)
	n.Heal()
	sendN(t, a, b.LocalAddr(), 2)
	if got := receiveAll(b, 30*time.Millisecond); len(got) != 2 {
		t.Errorf("after heal b received %v, want the 2 sent after", got)
	}
	if err := c.Send([]byte("x"), a.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := c.Send([]byte("x"), a.LocalAddr()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Send on a closed endpoint = %v", err)
	}
}

func TestFaultyDropsBothWays(t *testing.T) {
	a, b := udpPair(t)
	defer b.Close()
	fa, err := WithFaults(a, Faults{Drop: 0.2}, 1)
	if err != nil {
		t.Fatal(err)
	}
	// Outbound: about 800 of 1000 leave fa.
	sendN(t, fa, b.LocalAddr(), 1000)
	go func() {
		for i := 0; i < 1000; i++ {
			_ = b.Send([]byte(fmt.Sprint(i)), fa.LocalAddr())
		}
	}()
	// Inbound: about 80% of what the kernel hands over reaches fa's reader.
	// (The kernel itself may drop some of a burst.)
	got := receiveAll(fa, 100*time.Millisecond)
	st := fa.Stats()
	arrived := st.Sent - 1000
	if arrived < 500 {
		t.Fatalf("only %d of 1000 datagrams reached the socket", arrived)
	}
	if r := float64(len(got)) / float64(arrived); r < 0.74 || r > 0.86 {
		t.Errorf("inbound: %d of %d arrived at 20%% drop", len(got), arrived)
	}
	if r := float64(st.Dropped) / float64(st.Sent); r < 0.16 || r > 0.24 {
		t.Errorf("dropped %d of %d at 20%% drop", st.Dropped, st.Sent)
	}
	if err := fa.SetFaults(Faults{Drop: 2}); err == nil {
		t.Error("SetFaults accepted a probability of 2")
	}
}
