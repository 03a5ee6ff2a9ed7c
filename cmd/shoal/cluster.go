package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/server"
	"github.com/shoal-kv/shoal/server/certs"
	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/wire"
)

func clusterCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: want cluster %s", errUsage, clusterCommands)
	}
	switch args[0] {
	case "up":
		return clusterUp(ctx, args[1:], stdout, stderr)
	case "down":
		return clusterDown(args[1:], stdout, stderr)
	case "status":
		return clusterStatus(ctx, args[1:], stdout, stderr)
	case "add-node":
		return clusterAddNode(ctx, args[1:], stdout, stderr)
	case "move":
		return clusterMove(ctx, args[1:], stdout, stderr)
	case "remove-node":
		return clusterRemoveNode(ctx, args[1:], stdout, stderr)
	case "rebalance":
		return clusterRebalance(ctx, args[1:], stdout, stderr)
	case "split":
		return clusterSplit(ctx, args[1:], stdout, stderr)
	case "move-slots":
		return clusterMoveSlots(ctx, args[1:], stdout, stderr)
	default:
		return fmt.Errorf("%w: unknown cluster command %q: want %s", errUsage, args[0], clusterCommands)
	}
}

// clusterCommands lists the subcommands of `shoal cluster`.
const clusterCommands = "up, down, status, add-node, move, remove-node, rebalance, split or move-slots"

func specPath(dir string) string     { return filepath.Join(dir, "cluster.json") }
func pidPath(dir, id string) string  { return filepath.Join(dir, id+".pid") }
func logPath(dir, id string) string  { return filepath.Join(dir, id+".log") }
func dataPath(dir, id string) string { return filepath.Join(dir, id) }
func tlsPath(dir string) string      { return filepath.Join(dir, "tls") }

func readPid(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// running reports whether pid is a live shoal server process (and not a
// process that reused the number).
func running(pid int) bool {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return true // no /proc: trust the signal
	}
	if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		// A zombie has exited; its parent has just not reaped it.
		if f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:])); len(f) > 0 && f[0] == "Z" {
			return false
		}
	}
	return bytes.Contains(cmdline, []byte("server\x00"))
}

// parseDirCommand parses the flags of a command that takes no arguments
// and a required --dir.
func parseDirCommand(fs *flag.FlagSet, args []string) error {
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 0, "no arguments"); err != nil {
		return err
	}
	if fs.Lookup("dir").Value.String() == "" {
		return fmt.Errorf("%w: --dir is required", errUsage)
	}
	return nil
}

func clusterUp(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("cluster up", stderr)
	dir := fs.String("dir", "", "`DIR` for the cluster: spec, certificates (DIR/tls), data, logs and pid files")
	nodes := fs.Int("nodes", 3, "number of nodes of a new cluster")
	shards := fs.Int("shards", 4, "number of shards of a new cluster")
	replicas := fs.Int("replicas", 3, "replicas of each shard of a new cluster (2 or 3)")
	wait := fs.Duration("wait", 30*time.Second, "how long to wait for every shard to have a leader")
	insecure := fs.Bool("insecure", false, "run the nodes without authentication (for a trusted network only)")
	logStore := fs.String("log-store", server.LogStoreNode, "where a new cluster's nodes keep their raft logs: "+
		server.LogStoreNode+" (one per node) or "+server.LogStoreBolt+" (one file per replica)")
	if err := parseDirCommand(fs, args); err != nil {
		return err
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		return err
	}
	spec, err := server.LoadSpec(specPath(*dir))
	switch {
	case err == nil:
		fmt.Fprintf(stdout, "using the existing cluster in %s\n", *dir)
	case errors.Is(err, os.ErrNotExist):
		if spec, err = server.LocalSpec(*nodes, *shards, *replicas); err != nil {
			return err
		}
		if *logStore != server.LogStoreNode {
			spec.LogStore = *logStore
		}
		if err := spec.Validate(); err != nil {
			return fmt.Errorf("%w: %v", errUsage, err)
		}
		if err := spec.Save(specPath(*dir)); err != nil {
			return err
		}
	default:
		return err
	}
	var keys *wire.Keyring
	if !*insecure {
		if keys, _, err = ensureSecret(specPath(*dir), spec); err != nil {
			return err
		}
		wrote, err := certs.Ensure(tlsPath(*dir), "shoal cluster "+*dir, nodeIDs(spec))
		if err != nil {
			return err
		}
		if len(wrote) > 0 {
			fmt.Fprintf(stdout, "made %d certificate files in %s\n", len(wrote), tlsPath(*dir))
		}
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	exited := make(chan string, len(spec.Nodes))
	for _, n := range spec.Nodes {
		if pid, err := readPid(pidPath(*dir, n.ID)); err == nil && running(pid) {
			fmt.Fprintf(stdout, "%s already running (pid %d)\n", n.ID, pid)
			continue
		}
		pid, err := startNode(exe, *dir, n.ID, *insecure, nodeEnv(len(spec.Nodes)), exited)
		if err != nil {
			return fmt.Errorf("starting %s: %w", n.ID, err)
		}
		fmt.Fprintf(stdout, "started %s (pid %d): clients %s, raft %s, log %s\n", n.ID, pid, n.Client, n.Raft, logPath(*dir, n.ID))
	}

	wctx, cancel := context.WithTimeout(ctx, *wait)
	defer cancel()
	if err := waitForLeaders(wctx, spec, keys, exited); err != nil {
		return fmt.Errorf("%w (see the logs in %s)", err, *dir)
	}
	fmt.Fprintf(stdout, "cluster up: %d nodes, %d shards, every shard has a leader\n", len(spec.Nodes), len(spec.Shards))
	fmt.Fprintf(stdout, "try: shoal set --cluster %s KEY VALUE\n", specPath(*dir))
	return nil
}

// nodeIDs returns the ids of spec's nodes.
func nodeIDs(spec *server.Spec) []string {
	ids := make([]string, len(spec.Nodes))
	for i, n := range spec.Nodes {
		ids[i] = n.ID
	}
	return ids
}

// startNode starts `shoal server` for node id in the background, in a
// session of its own so it outlives this command, and writes its pid file.
// The node finds its credentials in DIR/tls, next to the spec.
// The node's id is sent on exited if it exits while this command runs.
func startNode(exe, dir, id string, insecure bool, env []string, exited chan<- string) (int, error) {
	logf, err := os.OpenFile(logPath(dir, id), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	args := []string{"server", "--id", id, "--data", dataPath(dir, id), "--cluster", specPath(dir)}
	if insecure {
		args = append(args, "--insecure")
	}
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	go func() {
		_ = cmd.Wait()
		exited <- id
	}()
	pid := cmd.Process.Pid
	return pid, os.WriteFile(pidPath(dir, id), []byte(strconv.Itoa(pid)+"\n"), 0o644)
}

// nodeEnv returns the environment of each of the nodes that `cluster up`
// starts on this host: this command's, with GOMAXPROCS set to the nodes'
// share of the cores this process may use, unless GOMAXPROCS is set
// already. The nodes share the host's cores; a Go process that believes it
// has all of them wakes idle threads to look for work whenever a packet or a
// timer wakes it, and a node hosting many idle raft groups is woken dozens
// of times a second.
func nodeEnv(nodes int) []string {
	env := os.Environ()
	if os.Getenv("GOMAXPROCS") != "" {
		return env
	}
	return append(env, "GOMAXPROCS="+strconv.Itoa(max(1, runtime.GOMAXPROCS(0)/nodes)))
}

// waitForLeaders polls the nodes, with keys (nil if insecure), until
// every shard has a leader.
func waitForLeaders(ctx context.Context, spec *server.Spec, keys *wire.Keyring, exited <-chan string) error {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var seeds []string
	for _, n := range spec.Nodes {
		seeds = append(seeds, n.Client)
	}
	var c *client.Client
	defer func() {
		if c != nil {
			c.Close(context.Background())
		}
	}()
	for {
		select {
		case id := <-exited:
			return fmt.Errorf("node %s exited", id)
		default:
		}
		if c == nil {
			c, _ = client.New(ctx, client.Config{Seeds: seeds, Secret: keys, Insecure: keys == nil, Logger: quiet})
		}
		if c != nil {
			st := collectStatus(ctx, c)
			if missing := st.leaderless(); len(missing) == 0 {
				return nil
			} else if ctx.Err() != nil {
				return fmt.Errorf("shards %v have no leader", missing)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the cluster did not answer: %w", ctx.Err())
		case id := <-exited:
			return fmt.Errorf("node %s exited", id)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func clusterDown(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("cluster down", stderr)
	dir := fs.String("dir", "", "`DIR` the cluster was started in")
	grace := fs.Duration("grace", 15*time.Second, "how long nodes may take to stop before they are killed")
	if err := parseDirCommand(fs, args); err != nil {
		return err
	}
	pidFiles, err := filepath.Glob(filepath.Join(*dir, "*.pid"))
	if err != nil {
		return err
	}
	if len(pidFiles) == 0 {
		fmt.Fprintf(stdout, "no nodes running in %s\n", *dir)
		return nil
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, f := range pidFiles {
		id := strings.TrimSuffix(filepath.Base(f), ".pid")
		pid, err := readPid(f)
		if err != nil || !running(pid) {
			os.Remove(f)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			how := stopProcess(pid, *grace)
			os.Remove(f)
			mu.Lock()
			fmt.Fprintf(stdout, "%s %s (pid %d)\n", how, id, pid)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return nil
}

func waitExit(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for running(pid) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

// clusterView is what `cluster status` reports.
type clusterView struct {
	Nodes  []nodeView  `json:"nodes"`
	Shards []shardView `json:"shards"`
	// Metadata is what the control group holds; nil if no node gave it
	// (a node that predates it, or none answered).
	Metadata *metadataView `json:"metadata,omitempty"`
}

// metadataView is the part of the cluster metadata status shows: its
// version, where the control group is, and the changes in progress.
type metadataView struct {
	Version   uint64           `json:"version"`
	Control   []string         `json:"control"`
	Moves     []shard.Move     `json:"moves,omitempty"`
	SlotMoves []shard.SlotMove `json:"slot_moves,omitempty"`
	Draining  []string         `json:"draining,omitempty"`
	Removed   []string         `json:"removed,omitempty"`
	Err       string           `json:"error,omitempty"`
}

// collectMetadata asks the cluster for its metadata (server.AdminInfo).
func collectMetadata(ctx context.Context, c *client.Client) *metadataView {
	var r server.AdminReply
	if err := c.Admin(ctx, server.AdminInfo, nil, &r); err != nil {
		return &metadataView{Err: err.Error()}
	}
	if r.Cluster == nil {
		return &metadataView{Err: "the answer holds no metadata"}
	}
	return &metadataView{Version: r.Cluster.Version, Control: r.Cluster.Control, Moves: r.Cluster.Moves,
		SlotMoves: r.Cluster.SlotMoves, Draining: r.Cluster.Draining, Removed: r.Cluster.Removed}
}

type nodeView struct {
	ID     string          `json:"id"`
	Addr   string          `json:"addr"`
	Up     bool            `json:"up"`
	Load   float64         `json:"load"`
	Shards []nodeShardView `json:"shards,omitempty"`
	Err    string          `json:"error,omitempty"`
}

// nodeShardView is one replica as its node reports it.
type nodeShardView struct {
	ID      shard.ID `json:"id"`
	State   string   `json:"state"`
	Leader  string   `json:"leader"`
	Applied uint64   `json:"applied"`
	Keys    int      `json:"keys"`
}

type shardView struct {
	ID       shard.ID      `json:"id"`
	Leader   string        `json:"leader"`
	Replicas []replicaView `json:"replicas"`
}

type replicaView struct {
	Node    string `json:"node"`
	State   string `json:"state"`
	Applied uint64 `json:"applied"`
	Keys    int    `json:"keys"`
}

func (v *clusterView) leaderless() []shard.ID {
	var out []shard.ID
	for _, s := range v.Shards {
		if s.Leader == "" {
			out = append(out, s.ID)
		}
	}
	return out
}

// collectStatus asks every node for its status, concurrently; a node that
// does not answer is reported down.
func collectStatus(ctx context.Context, c *client.Client) *clusterView {
	infos := c.Nodes()
	v := &clusterView{Nodes: make([]nodeView, len(infos))}
	var wg sync.WaitGroup
	for i, info := range infos {
		v.Nodes[i] = nodeView{ID: info.ID, Addr: info.Addr.String()}
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := c.NodeStatus(ctx, info.ID)
			if err != nil {
				v.Nodes[i].Err = err.Error()
				return
			}
			v.Nodes[i].Up, v.Nodes[i].Load = true, st.Activity
			for _, ss := range st.Shards {
				v.Nodes[i].Shards = append(v.Nodes[i].Shards,
					nodeShardView{ID: ss.ID, State: ss.State, Leader: ss.Leader, Applied: ss.Applied, Keys: ss.Keys})
			}
		}()
	}
	wg.Wait()
	for _, s := range c.Map().Shards {
		sv := shardView{ID: s.ID}
		for _, id := range s.Replicas {
			rv := replicaView{Node: id, State: "down"}
			for _, n := range v.Nodes {
				for _, ss := range n.Shards {
					if n.ID == id && ss.ID == s.ID {
						rv = replicaView{Node: id, State: ss.State, Applied: ss.Applied, Keys: ss.Keys}
					}
				}
			}
			if rv.State == "Leader" {
				sv.Leader = id
			}
			sv.Replicas = append(sv.Replicas, rv)
		}
		v.Shards = append(v.Shards, sv)
	}
	return v
}

func clusterStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return clientCommand(ctx, "cluster status", args, 0, "no arguments", stderr, nil,
		func(ctx context.Context, c *client.Client, t *target, _ []string) error {
			v := collectStatus(ctx, c)
			v.Metadata = collectMetadata(ctx, c)
			return printStatus(stdout, v, t.json)
		})
}

// printStatus prints v as tables, or as JSON.
func printStatus(stdout io.Writer, v *clusterView, asJSON bool) error {
	if asJSON {
		return printJSON(stdout, v)
	}
	w := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NODE\tCLIENT ADDRESS\tSTATE\tLOAD\tLEADS")
	for _, n := range v.Nodes {
		if !n.Up {
			fmt.Fprintf(w, "%s\t%s\tdown\t-\t-\n", n.ID, n.Addr)
			continue
		}
		var leads []string
		for _, s := range n.Shards {
			if s.State == "Leader" {
				leads = append(leads, strconv.Itoa(int(s.ID)))
			}
		}
		sort.Strings(leads)
		fmt.Fprintf(w, "%s\t%s\tup\t%.2f\t%s\n", n.ID, n.Addr, n.Load, strings.Join(leads, " "))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "SHARD\tLEADER\tREPLICAS (state, applied index, keys)")
	for _, s := range v.Shards {
		leader := s.Leader
		if leader == "" {
			leader = "none"
		}
		var reps []string
		for _, r := range s.Replicas {
			if r.State == "down" {
				reps = append(reps, r.Node+" down")
				continue
			}
			reps = append(reps, fmt.Sprintf("%s %s %d %d", r.Node, r.State, r.Applied, r.Keys))
		}
		fmt.Fprintf(w, "%d\t%s\t%s\n", s.ID, leader, strings.Join(reps, ", "))
	}
	if md := v.Metadata; md != nil {
		fmt.Fprintln(w)
		if md.Err != "" {
			fmt.Fprintf(w, "metadata:\tunknown (%s)\n", md.Err)
			return w.Flush()
		}
		fmt.Fprintf(w, "metadata version:\t%d\n", md.Version)
		fmt.Fprintf(w, "control group:\t%s\n", strings.Join(md.Control, " "))
		for _, m := range md.Moves {
			fmt.Fprintf(w, "moving:\t%s from %s to %s\n", groupName(m.Group), m.From, m.To)
		}
		for _, m := range md.SlotMoves {
			what := "moving slots"
			if m.Abort && !m.Flipped {
				what = "undoing the move of slots"
			}
			fmt.Fprintf(w, "%s:\t%d-%d from shard %d to shard %d\n", what, m.Start, m.End-1, m.From, m.To)
		}
		if len(md.Draining) > 0 {
			fmt.Fprintf(w, "removing:\t%s\n", strings.Join(md.Draining, " "))
		}
		if len(md.Removed) > 0 {
			fmt.Fprintf(w, "removed:\t%s\n", strings.Join(md.Removed, " "))
		}
	}
	return w.Flush()
}
