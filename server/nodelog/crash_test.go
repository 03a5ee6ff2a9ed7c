package nodelog

import (
	"bufio"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/hashicorp/raft"
)

// crashDirEnv, when set, makes the test binary the child of
// TestKilledWhileAppending: it appends to the store in that directory
// until it is killed.
const crashDirEnv = "NODELOG_CRASH_DIR"

const crashGroups = 8

// A real process appends to 8 groups at once and prints each append once
// StoreLogs has returned; it is killed with SIGKILL mid-stream. After
// reopening, each group's log is a prefix of what the child appended (its
// entries from 1, each as appended, none missing between) and holds every
// entry the child saw acknowledged.
func TestKilledWhileAppending(t *testing.T) {
	if os.Getenv(crashDirEnv) != "" {
		t.Skip("the child")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$")
	cmd.Env = append(os.Environ(), crashDirEnv+"="+dir)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acked := make([]uint64, crashGroups)
	lines := bufio.NewScanner(out)
	n := 0
	for ; lines.Scan(); n++ {
		var g, i uint64
		if _, err := fmt.Sscanf(lines.Text(), "%d %d", &g, &i); err != nil || g >= crashGroups {
			continue // the test framework's own lines
		}
		acked[g] = max(acked[g], i)
		if n == 3000 {
			if err := cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n < 3000 {
		t.Fatalf("the child acknowledged %d appends, and stopped", n)
	}
	err = cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ProcessState.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("the child ended with %v before it was killed", err)
	}
	s := open(t, dir)
	defer s.Close()
	checkAcknowledged(t, s, acked)
}

// checkAcknowledged fails unless each group g of the crash tests holds in
// s a prefix of what was appended, acked[g] entries or more.
func checkAcknowledged(t *testing.T, s *Store, acked []uint64) {
	t.Helper()
	for g := range uint64(crashGroups) {
		l, err := s.Group(g)
		if err != nil {
			t.Fatal(err)
		}
		last, _ := l.LastIndex()
		if last < acked[g] {
			t.Errorf("group %d: last entry %d, but %d was acknowledged", g, last, acked[g])
			continue
		}
		checkLog(t, l, g, 1, last, term1)
		t.Logf("group %d: %d entries acknowledged, %d on disk", g, acked[g], last)
	}
}

// TestCrashChild is the child process of TestKilledWhileAppending.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("run by TestKilledWhileAppending")
	}
	s := open(t, dir)
	var mu sync.Mutex
	w := bufio.NewWriter(os.Stdout)
	appendToAll(t, s, nil, func(g, i uint64) {
		mu.Lock()
		fmt.Fprintf(w, "%d %d\n", g, i)
		w.Flush()
		mu.Unlock()
	}).Wait()
}

// appendToAll starts a goroutine for each group of the crash tests that
// appends to it in batches of 3 until stop closes, and calls acked with
// the group and its last entry after each append returns. The returned
// group waits for them.
func appendToAll(t *testing.T, s *Store, stop <-chan struct{}, acked func(g, i uint64)) *sync.WaitGroup {
	var wg sync.WaitGroup
	for g := range uint64(crashGroups) {
		l, err := s.Group(g)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := uint64(1); ; i += 3 {
				select {
				case <-stop:
					return
				default:
				}
				if err := l.StoreLogs([]*raft.Log{entry(g, i, 1), entry(g, i+1, 1), entry(g, i+2, 1)}); err != nil {
					t.Error(err)
					return
				}
				acked(g, i+2)
			}
		}()
	}
	return &wg
}

// A power loss keeps every acknowledged append: the store runs on a file
// system that, cloned as after a crash, keeps only what was synced (and a
// random half of the rest). The clone holds each group's entries up to at
// least the last one acknowledged before it, and nothing but a prefix of
// what the group appended.
func TestPowerLossKeepsAcknowledgedAppends(t *testing.T) {
	fs := vfs.NewCrashableMem()
	cfg := DefaultConfig("/log")
	cfg.FS, cfg.MinSyncInterval = fs, 200*time.Microsecond
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var acked [crashGroups]atomic.Uint64
	stop := make(chan struct{})
	wg := appendToAll(t, s, stop, func(g, i uint64) { acked[g].Store(i) })
	total := func() (n uint64) {
		for g := range acked {
			n += acked[g].Load()
		}
		return n
	}
	for total() < 2000 {
		time.Sleep(time.Millisecond)
	}
	before := make([]uint64, crashGroups)
	for g := range acked {
		before[g] = acked[g].Load()
	}
	clone := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 50, RNG: rand.New(rand.NewPCG(1, 2))})
	close(stop)
	wg.Wait()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	cfg.FS = clone
	s, err = Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	checkAcknowledged(t, s, before)
}
