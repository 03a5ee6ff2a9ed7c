package nodelog

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"testing"

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
	for n := 0; lines.Scan(); n++ {
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
	if err := cmd.Wait(); err == nil {
		t.Fatal("the child exited by itself before it was killed")
	}
	s := open(t, dir)
	defer s.Close()
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
				if err := l.StoreLogs([]*raft.Log{entry(g, i, 1), entry(g, i+1, 1), entry(g, i+2, 1)}); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				fmt.Fprintf(w, "%d %d\n", g, i+2)
				w.Flush()
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}
