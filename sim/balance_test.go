package sim

import (
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/wire"
)

func TestJain(t *testing.T) {
	for _, tc := range []struct {
		x    []float64
		want float64
	}{
		{[]float64{1, 1, 1, 1}, 1},
		{[]float64{1, 0, 0, 0}, 0.25},
		{[]float64{2, 1}, 0.9},
		{[]float64{0, 0}, 1},
	} {
		if got := jain(tc.x); math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("jain(%v) = %v, want %v", tc.x, got, tc.want)
		}
	}
}

func TestMDOne(t *testing.T) {
	// ρ = 0.6: s + 0.6s/0.8 = 1.75s.
	if got := mdOne(2*time.Millisecond, 0.6); got != 3500*time.Microsecond {
		t.Errorf("M/D/1 at 0.6, 2ms: %v", got)
	}
}

// The service queue hands the node its queries one service time apart, in
// order, with their arrival times, and a stall holds heartbeats too.
func TestServiceQueue(t *testing.T) {
	net := wire.NewSimNet(1)
	a, err := net.Listen(netip.AddrPort{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := net.Listen(netip.AddrPort{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	defer b.Close()
	const service = 20 * time.Millisecond
	q := &serviceQueue{Transport: a, service: service}
	start := time.Now()
	for txid := uint64(1); txid <= 3; txid++ {
		query, _ := wire.Encode(&wire.Message{Type: wire.TypeQuery, TxID: txid, Op: wire.OpPing})
		_ = b.Send(query, a.LocalAddr())
	}
	beat, _ := wire.Encode(&wire.Message{Type: wire.TypeHeartbeat, Node: "n"})
	_ = b.Send(beat, a.LocalAddr())
	sent := time.Now()
	buf := make([]byte, wire.MaxDatagramSize)
	for txid := uint64(1); txid <= 3; txid++ {
		n, _, arrived, err := q.Receive(buf)
		if err != nil {
			t.Fatal(err)
		}
		m, err := wire.Decode(buf[:n])
		if err != nil || m.TxID != txid {
			t.Fatalf("query %d: got %+v, %v", txid, m, err)
		}
		if d := time.Since(start); d < time.Duration(txid)*service {
			t.Errorf("query %d handed over %v after all three were sent, want at least %v", txid, d, time.Duration(txid)*service)
		}
		if arrived.After(sent) {
			t.Errorf("query %d arrived %v after all were sent", txid, arrived.Sub(sent))
		}
	}
	if q.served.Load() != 3 {
		t.Errorf("served %d", q.served.Load())
	}
	if sojourn := time.Duration(q.sojourn.Load()); sojourn < 11*service/2 || sojourn > 7*service {
		t.Errorf("total time in system %v, want about 1+2+3 service times", sojourn)
	}
	if _, _, _, err := q.Receive(buf); err != nil {
		t.Fatal(err)
	}
	if q.served.Load() != 3 {
		t.Error("a heartbeat counted as served")
	}
	q.stall(100 * time.Millisecond)
	start = time.Now()
	_ = q.Send(beat, b.LocalAddr())
	if d := time.Since(start); d < 90*time.Millisecond {
		t.Errorf("a heartbeat left %v into a 100 ms stall", d)
	}
}

// The balance experiment, reduced: every check must pass on the real code.
func TestBalanceExperiment(t *testing.T) {
	runQuick(t, balance)
}

// The report of a grid: one table row per cell, a figure per scenario with
// a point per temperature, the checks on the runs they name.
func TestBalanceReport(t *testing.T) {
	setup := newBalanceSetup(&Config{})
	runs := map[balanceKey][]balanceRun{}
	ms := time.Millisecond
	run := balanceRun{lat: []time.Duration{ms}, p50: ms, p99: ms, p999: ms, served: []int64{300, 300, 300, 300, 60},
		sojourn: make([]time.Duration, 5), window: time.Second}
	runs[balanceKey{"equal", "random", 0}] = []balanceRun{run}
	for _, sc := range setup.scenarios {
		for _, st := range setup.strategies {
			for _, loss := range setup.losses {
				runs[balanceKey{sc.name, st.label(), loss}] = []balanceRun{run}
			}
		}
	}
	r := balanceReport(setup, runs)
	if got, want := len(r.Tables[0].Rows), len(setup.scenarios)*len(setup.strategies)*len(setup.losses); got != want {
		t.Errorf("%d rows, want %d", got, want)
	}
	if len(r.Figures) != len(setup.scenarios) {
		t.Fatalf("%d figures", len(r.Figures))
	}
	for _, s := range r.Figures[0].Series {
		if len(s.X) != 3 || len(s.Y) != 3 {
			t.Errorf("series %s has %d points, want one per temperature", s.Name, len(s.X))
		}
	}
	// 60 replies of 10 ms in a second: the slow node 60% busy.
	found := false
	for _, c := range r.Checks {
		if strings.Contains(c.Name, "slow node, softmin") {
			found = true
			if math.Abs(c.Measured-0.6) > 1e-9 || !c.Pass {
				t.Errorf("%s: %v (pass %v), want 0.6, passing", c.Name, c.Measured, c.Pass)
			}
		}
	}
	if !found {
		t.Error("no check of the default on the slow node")
	}
	if _, err := r.Write(t.TempDir()); err != nil {
		t.Error(err)
	}
}
