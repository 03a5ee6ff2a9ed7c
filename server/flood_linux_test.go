package server_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/rpc"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/server"
	"github.com/shoal-kv/shoal/server/certs"
	"github.com/shoal-kv/shoal/server/servertest"
	"github.com/shoal-kv/shoal/wire"
)

// floodChildEnv, set in the environment of this test binary, makes
// TestListenerSurvivesConnectionFlood run one node as its child says.
const floodChildEnv = "SHOAL_FLOOD_CHILD"

// floodChild is the node a child process of the flood test runs.
type floodChild struct {
	ID, Spec, Data, TLS, Secret string
	// NoFile is the child's limit on open files.
	NoFile uint64
}

const (
	// floodConns connections are opened and closed against the node.
	floodConns = 25000
	// floodNoFile is the node's file limit: a few dozen files of its own,
	// and room for fewer connections than maxPendingConns.
	floodNoFile = 128
	// maxFloodFailures dials failing (a backlog that stays full, when the
	// node no longer accepts) fail the test.
	maxFloodFailures = 32
)

// A node's listener survives running out of file descriptors and a flood
// of connections: it retries its accepts, and once the flood has passed it
// takes its peers' connections again. The node runs in a child process
// with a low file limit; this process holds connections to it until its
// accepts fail (EMFILE), lets go, opens and closes 25,000 more, and then
// asks the node for a read index over RPC and has a write commit with a
// quorum that needs it.
func TestListenerSurvivesConnectionFlood(t *testing.T) {
	if env := os.Getenv(floodChildEnv); env != "" {
		runFloodChild(t, env)
		return
	}
	dir := t.TempDir()
	spec, err := server.LocalSpec(3, 1, 3)
	if err != nil {
		t.Fatal(err)
	}
	specFile, tlsDir := filepath.Join(dir, "cluster.json"), filepath.Join(dir, "tls")
	if err := spec.Save(specFile); err != nil {
		t.Fatal(err)
	}
	creds := map[string]*server.PeerTLS{}
	if _, err := certs.Ensure(tlsDir, "flood test CA", []string{"n1", "n2", "n3"}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"n1", "n2", "n3"} {
		if creds[id], err = server.LoadPeerTLS(tlsDir, id); err != nil {
			t.Fatal(err)
		}
	}
	c := servertest.New(t, servertest.Options{Spec: spec, Dir: filepath.Join(dir, "data"),
		Configure: func(cfg *server.Config) { cfg.PeerTLS = creds[cfg.ID] }})
	if err := c.Kill("n1"); err != nil {
		t.Fatal(err)
	}
	logs := startFloodChild(t, floodChild{ID: "n1", Spec: specFile, Data: filepath.Join(c.Dir(), "n1"), TLS: tlsDir,
		Secret: filepath.Join(c.Dir(), servertest.SecretFile), NoFile: floodNoFile})

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cl := newClient(t, c, client.Config{Attempts: 50})
	n1Follows := func() bool {
		st, err := cl.NodeStatus(ctx, "n1")
		return err == nil && len(st.Shards) == 1 && st.Shards[0].Leader != ""
	}
	servertest.WaitFor(t, 20*time.Second, "n1 in a shard with a leader", n1Follows)

	addr := spec.Node("n1").Raft
	var held []net.Conn
	for !strings.Contains(logs.String(), "too many open files") {
		if len(held) > 4*floodNoFile {
			t.Fatalf("%d connections held and the node's accepts have not failed:\n%s", len(held), logs)
		}
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("holding connection %d: %v", len(held), err)
		}
		held = append(held, conn)
		if len(held) > floodNoFile {
			time.Sleep(time.Millisecond) // let the node's log catch up
		}
	}
	for _, conn := range held {
		_ = conn.(*net.TCPConn).SetLinger(0)
		conn.Close()
	}
	start := time.Now()
	var opened, failed atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for opened.Add(1) <= floodConns {
				conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err != nil {
					if failed.Add(1) > maxFloodFailures {
						return // the node stopped accepting
					}
					continue
				}
				_ = conn.(*net.TCPConn).SetLinger(0) // no TIME_WAIT: a reset
				conn.Close()
			}
		})
	}
	wg.Wait()
	if failed.Load() > maxFloodFailures {
		t.Fatalf("over %d dials to n1 failed: it no longer accepts:\n%s", maxFloodFailures, tail(logs.String(), 40))
	}
	t.Logf("held %d connections until the node's accepts failed, then opened and closed %d in %v (%d dials failed)",
		len(held), floodConns, time.Since(start).Round(time.Millisecond), failed.Load())

	servertest.WaitFor(t, 10*time.Second, "the node's accepts recovered", func() bool {
		return strings.Contains(logs.String(), "accept recovered")
	})
	// n1 serves its peers' RPCs on new connections.
	conn, err := server.DialRPC(ctx, spec, creds["n2"], "n1")
	if err != nil {
		t.Fatalf("dialing n1 after the flood: %v", err)
	}
	rc := rpc.NewClient(conn)
	defer rc.Close()
	var reply server.ForwardReply
	if err := rc.Call("Node.Forward", server.ForwardRequest{Shard: 0, ReadIndex: true, Timeout: time.Second}, &reply); err != nil {
		t.Fatalf("a forward to n1 after the flood: %v", err)
	}
	// A write commits with n2 down: n1 and n3 make the quorum.
	servertest.WaitFor(t, 10*time.Second, "n1 in a shard with a leader after the flood", n1Follows)
	if err := c.Kill("n2"); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Set(ctx, "after-the-flood", []byte("v")); err != nil {
		t.Fatalf("a write with n1 and n3 after the flood: %v\nn1's log:\n%s", err, tail(logs.String(), 40))
	}
	it, err := cl.Get(ctx, "after-the-flood")
	if err != nil || string(it.Value) != "v" {
		t.Fatalf("reading the write back: %q %v", it.Value, err)
	}
}

// startFloodChild runs node as a child process of this test binary until
// the test ends, and returns its log.
func startFloodChild(t *testing.T, node floodChild) *syncBuffer {
	t.Helper()
	env, err := json.Marshal(node)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestListenerSurvivesConnectionFlood$")
	cmd.Env = append(os.Environ(), floodChildEnv+"="+string(env))
	logs := &syncBuffer{}
	cmd.Stderr = logs
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close() // the child closes its node and exits
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("the child node: %v\n%s", err, tail(logs.String(), 40))
			}
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Errorf("the child node did not stop")
		}
	})
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("the child said %q", line)
		}
		ready <- err
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("starting the child node: %v\n%s", err, logs)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the child node did not start:\n%s", logs)
	}
	return logs
}

// runFloodChild runs the node env describes with its file limit, until
// its stdin closes.
func runFloodChild(t *testing.T, env string) {
	var node floodChild
	if err := json.Unmarshal([]byte(env), &node); err != nil {
		t.Fatal(err)
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	lim.Cur = node.NoFile
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	spec, err := server.LoadSpec(node.Spec)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := server.LoadPeerTLS(node.TLS, node.ID)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	keys, err := wire.LoadKeyring(node.Secret)
	if err != nil {
		t.Fatal(err)
	}
	n, err := server.Start(context.Background(), server.Config{ID: node.ID, DataDir: node.Data, Spec: spec, PeerTLS: creds,
		Secret: keys, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	if err := n.Close(); err != nil {
		t.Error(err)
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
