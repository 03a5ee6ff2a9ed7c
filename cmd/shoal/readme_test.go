package main

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// walkthrough returns the README's walk-through script and the outputs its
// "# →" comments promise, in order.
func walkthrough(t *testing.T) (script string, want []string) {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	start := strings.Index(s, "<!-- walkthrough -->")
	end := strings.Index(s, "<!-- /walkthrough -->")
	if start < 0 || end < start {
		t.Fatal("README.md has no <!-- walkthrough --> block")
	}
	block := strings.TrimSpace(s[start+len("<!-- walkthrough -->") : end])
	block = strings.TrimPrefix(block, "```sh")
	block = strings.TrimSuffix(block, "```")
	for _, line := range strings.Split(block, "\n") {
		if i := strings.Index(line, "# → "); i >= 0 {
			want = append(want, strings.TrimSpace(line[i+len("# → "):]))
		}
	}
	return block, want
}

// killClusters kills every node whose pid file lies under dir, so a failed
// run leaves no processes behind.
func killClusters(dir string) {
	_ = filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err == nil && strings.HasSuffix(path, ".pid") {
			if b, err := os.ReadFile(path); err == nil {
				if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && running(pid) {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		return nil
	})
}

// The README walk-through works from a checkout exactly as written: the
// test runs its block with bash from the module root and checks the values
// its comments promise.
func TestReadmeWalkthrough(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	script, want := walkthrough(t)
	if len(want) < 3 {
		t.Fatalf("the walk-through promises only %v", want)
	}
	tmp := t.TempDir()
	t.Cleanup(func() { killClusters(tmp) })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-e", "-o", "pipefail", "-c", script)
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	out, err := cmd.CombinedOutput()
	t.Logf("walk-through output:\n%s", out)
	if err != nil {
		t.Fatalf("walk-through failed: %v", err)
	}
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	i := 0
	for _, line := range lines {
		if i < len(want) && line == want[i] {
			i++
		}
	}
	if i < len(want) {
		t.Errorf("output lacks %q (promised outputs, in order: %q)", want[i], want)
	}
	if n := countRunning(tmp); n != 0 {
		t.Errorf("%d nodes still running after cluster down", n)
	}
}

func countRunning(dir string) int {
	n := 0
	_ = filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err == nil && strings.HasSuffix(path, ".pid") {
			if pid, err := readPid(path); err == nil && running(pid) {
				n++
			}
		}
		return nil
	})
	return n
}
