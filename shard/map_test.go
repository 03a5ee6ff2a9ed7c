package shard

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"testing"
)

// The slot of a key must never change: clients and nodes of different
// versions and platforms must agree. xxhash64("") is 0xef46db3751d8e999,
// whose low 12 bits are 0x999 = 2457.
func TestKeySlotIsStable(t *testing.T) {
	golden := map[string]int{
		"":          2457,
		"a":         3675,
		"greeting":  3455,
		"user:42":   450,
		"k00000001": 307,
		"日本":        4011,
	}
	for key, want := range golden {
		if got := KeySlot(key); got != want {
			t.Errorf("KeySlot(%q) = %d, want %d", key, got, want)
		}
	}
}

// chiSquare returns the chi-square statistic of counts against a uniform
// distribution of total over len(counts) cells.
func chiSquare(counts []int, total int) float64 {
	exp := float64(total) / float64(len(counts))
	var x2 float64
	for _, c := range counts {
		d := float64(c) - exp
		x2 += d * d / exp
	}
	return x2
}

// criticalChiSquare approximates the upper 0.1% point of the chi-square
// distribution with df degrees of freedom (Wilson–Hilferty).
func criticalChiSquare(df float64) float64 {
	const z = 3.090 // upper 0.1% point of the standard normal
	a := 2 / (9 * df)
	return df * math.Pow(1-a+z*math.Sqrt(a), 3)
}

func TestKeysSpreadUniformly(t *testing.T) {
	const n = 100_000
	m, err := NewEvenMap([]string{"n1", "n2", "n3"}, 4, 3)
	if err != nil {
		t.Fatal(err)
	}
	slots := make([]int, SlotCount)
	shards := make([]int, 4)
	for i := 0; i < n; i++ {
		key := fmt.Sprintf("k%08d", i)
		slots[KeySlot(key)]++
		shards[m.ShardOf(key)]++
	}
	x2, crit := chiSquare(slots, n), criticalChiSquare(SlotCount-1)
	t.Logf("slots: chi-square %.1f, 0.1%% critical value %.1f (df %d)", x2, crit, SlotCount-1)
	if x2 > crit {
		t.Errorf("slots: chi-square %.1f over %d slots exceeds %.1f", x2, SlotCount, crit)
	}
	x2, crit = chiSquare(shards, n), criticalChiSquare(3)
	t.Logf("shards: counts %v, chi-square %.2f, critical %.2f", shards, x2, crit)
	if x2 > crit {
		t.Errorf("shards: chi-square %.1f over counts %v exceeds %.1f", x2, shards, crit)
	}
}

func TestNewEvenMap(t *testing.T) {
	m, err := NewEvenMap([]string{"a", "b", "c"}, 5, 2)
	if err != nil {
		t.Fatal(err)
	}
	wantReplicas := [][]string{{"a", "b"}, {"b", "c"}, {"c", "a"}, {"a", "b"}, {"b", "c"}}
	for i, s := range m.Shards {
		if fmt.Sprint(s.Replicas) != fmt.Sprint(wantReplicas[i]) {
			t.Errorf("shard %d replicas %v, want %v", i, s.Replicas, wantReplicas[i])
		}
	}
	// 4096 = 5*819 + 1: the first range takes the extra slot.
	if r := m.Ranges[0]; r.End-r.Start != 820 {
		t.Errorf("first range %v, want 820 slots", r)
	}
	for slot := 0; slot < SlotCount; slot++ {
		r := m.Ranges[m.SlotShard(slot)]
		if slot < r.Start || slot >= r.End {
			t.Fatalf("slot %d mapped to shard %d with range %v", slot, m.SlotShard(slot), r)
		}
	}
	if got := fmt.Sprint(m.ShardsOf("a")); got != "[0 2 3]" {
		t.Errorf("ShardsOf(a) = %s, want [0 2 3]", got)
	}
}

func TestNewEvenMapRejects(t *testing.T) {
	for _, tc := range []struct {
		nodes            []string
		shards, replicas int
	}{
		{nil, 1, 1},
		{[]string{"a"}, 0, 1},
		{[]string{"a"}, SlotCount + 1, 1},
		{[]string{"a", "b"}, 2, 3},
		{[]string{"a", "b"}, 2, 0},
	} {
		if _, err := NewEvenMap(tc.nodes, tc.shards, tc.replicas); !errors.Is(err, ErrInvalidMap) {
			t.Errorf("NewEvenMap(%v, %d, %d) = %v, want ErrInvalidMap", tc.nodes, tc.shards, tc.replicas, err)
		}
	}
}

func TestValidateRejects(t *testing.T) {
	valid := func() *Map {
		return &Map{
			Version: 1,
			Shards:  []Shard{{ID: 0, Replicas: []string{"a"}}, {ID: 1, Replicas: []string{"b"}}},
			Ranges:  []Range{{0, 100, 0}, {100, SlotCount, 1}},
		}
	}
	if err := valid().Validate(); err != nil {
		t.Fatalf("valid map: %v", err)
	}
	for name, mutate := range map[string]func(*Map){
		"no shards":         func(m *Map) { m.Shards = nil },
		"unsorted shards":   func(m *Map) { m.Shards[0].ID, m.Shards[1].ID = 1, 0 },
		"duplicate replica": func(m *Map) { m.Shards[0].Replicas = []string{"a", "a"} },
		"no replicas":       func(m *Map) { m.Shards[1].Replicas = nil },
		"gap":               func(m *Map) { m.Ranges[1].Start = 101 },
		"overlap":           func(m *Map) { m.Ranges[1].Start = 99 },
		"short":             func(m *Map) { m.Ranges[1].End = SlotCount - 1 },
		"past the end":      func(m *Map) { m.Ranges[1].End = SlotCount + 1 },
		"empty range":       func(m *Map) { m.Ranges = []Range{{0, 0, 0}, {0, SlotCount, 1}} },
		"unknown shard":     func(m *Map) { m.Ranges[1].Shard = 7 },
		"no ranges":         func(m *Map) { m.Ranges = nil },
	} {
		m := valid()
		mutate(m)
		if err := m.Validate(); !errors.Is(err, ErrInvalidMap) {
			t.Errorf("%s: Validate = %v, want ErrInvalidMap", name, err)
		}
	}
}

func TestAssignAndOwns(t *testing.T) {
	m, err := NewEvenMap([]string{"a"}, 2, 1) // [0,2048) → 0, [2048,4096) → 1
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		start, end int
		to         ID
		want       []Range
	}{
		{1024, 2048, 1, []Range{{0, 1024, 0}, {1024, 4096, 1}}},
		{0, 2048, 1, []Range{{0, 4096, 1}}},
		{1000, 3000, 7, []Range{{0, 1000, 0}, {1000, 3000, 7}, {3000, 4096, 1}}},
		{100, 200, 0, []Range{{0, 2048, 0}, {2048, 4096, 1}}},
		{4000, 4096, 2, []Range{{0, 2048, 0}, {2048, 4000, 1}, {4000, 4096, 2}}},
	} {
		got := m.Assign(tc.start, tc.end, tc.to)
		if !slices.Equal(got, tc.want) {
			t.Errorf("Assign(%d, %d, %d) = %v, want %v", tc.start, tc.end, tc.to, got, tc.want)
		}
		n := &Map{Version: 2, Shards: []Shard{{ID: 0, Replicas: []string{"a"}}, {ID: 1, Replicas: []string{"a"}}, {ID: 2, Replicas: []string{"a"}}, {ID: 7, Replicas: []string{"a"}}}, Ranges: got}
		if err := n.Validate(); err != nil {
			t.Errorf("Assign(%d, %d, %d): %v", tc.start, tc.end, tc.to, err)
		}
		if !n.Owns(tc.to, tc.start, tc.end) || (tc.start > 0 && n.Owns(tc.to, 0, tc.end) && tc.to != 0 && tc.to != 1) {
			t.Errorf("after Assign(%d, %d, %d), Owns disagrees: %v", tc.start, tc.end, tc.to, got)
		}
	}
	if m.Owns(0, 2000, 2100) || !m.Owns(1, 2048, 4096) || m.Owns(0, 5, 5) {
		t.Error("Owns of the even map is wrong")
	}
}
