package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/server"
	"github.com/shoal-kv/shoal/server/certs"
	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/wire"
)

// The commands that change a local cluster's membership (add-node, move,
// remove-node, rebalance) work on a directory `cluster up` made: they send
// their command to the running cluster (client.Admin), wait, within
// --timeout, until the metadata shows it done, and then rewrite
// DIR/cluster.json from the metadata (server.SpecOf), so that `cluster
// up`, `cluster down` and the other commands find the nodes as they now
// are.

// Waiting for the metadata: how often it is read, and how often a wait
// that goes on says so.
const (
	pollInterval     = 250 * time.Millisecond
	progressInterval = 5 * time.Second
)

// localCluster is a cluster `cluster up` runs in dir, and a client of it.
type localCluster struct {
	dir      string
	spec     *server.Spec
	insecure bool
	keys     *wire.Keyring // nil if insecure
	c        *client.Client
	// floor is the newest metadata version this command has seen. A node
	// answers "info" from the metadata it follows, which may lag the
	// control group's: an answer older than floor says nothing new (a
	// move it lacks may have started, not ended), and is not used.
	floor uint64
	// cancel ends the context the command runs in (localFlags.open).
	cancel context.CancelFunc
}

// elasticFlags registers the flags every membership command takes.
func elasticFlags(fs *flag.FlagSet) *localFlags {
	return &localFlags{
		dir:      fs.String("dir", "", "`DIR` the cluster was started in (by cluster up)"),
		timeout:  fs.Duration("timeout", 2*time.Minute, "give up waiting after this long"),
		insecure: fs.Bool("insecure", false, "the cluster runs with --insecure"),
	}
}

// localFlags are the flags every membership command takes.
type localFlags struct {
	dir      *string
	timeout  *time.Duration
	insecure *bool
}

// open connects to the local cluster the flags name, and returns ctx
// bounded by the flags' timeout, which closing the cluster ends.
func (lf *localFlags) open(ctx context.Context, stderr io.Writer) (context.Context, *localCluster, error) {
	ctx, cancel := context.WithTimeout(ctx, *lf.timeout)
	lc, err := openLocal(ctx, *lf.dir, *lf.insecure, stderr)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	lc.cancel = cancel
	return ctx, lc, nil
}

// openLocal reads the spec and the secret of the cluster in dir and
// connects to it.
func openLocal(ctx context.Context, dir string, insecure bool, stderr io.Writer) (*localCluster, error) {
	spec, err := server.LoadSpec(specPath(dir))
	if err != nil {
		return nil, err
	}
	lc := &localCluster{dir: dir, spec: spec, insecure: insecure, floor: spec.MapVersion}
	if !insecure {
		if lc.keys, err = loadSecret(secretPath(specPath(dir)), specPath(dir), spec); err != nil {
			return nil, fmt.Errorf("%w (or use --insecure for a cluster run with it)", err)
		}
	}
	var seeds []string
	for _, n := range spec.Nodes {
		seeds = append(seeds, n.Client)
	}
	lc.c, err = client.New(ctx, client.Config{Seeds: seeds, Secret: lc.keys, Insecure: insecure,
		Logger: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelError}))})
	if err != nil {
		return nil, fmt.Errorf("connecting to the cluster in %s: %w", dir, err)
	}
	return lc, nil
}

func (lc *localCluster) close() {
	lc.c.Close(context.Background())
	if lc.cancel != nil {
		lc.cancel()
	}
}

// admin sends a cluster command and returns the answer.
func (lc *localCluster) admin(ctx context.Context, command string, args *server.AdminArgs) (*server.AdminReply, error) {
	var reply server.AdminReply
	if err := lc.c.Admin(ctx, command, args, &reply); err != nil {
		return nil, err
	}
	if reply.Cluster == nil {
		return nil, fmt.Errorf("cluster command %q: the answer holds no metadata", command)
	}
	return &reply, nil
}

// saw raises the floor to version v.
func (lc *localCluster) saw(v uint64) { lc.floor = max(lc.floor, v) }

// info returns the cluster's metadata, at least as new as any this
// command has seen.
func (lc *localCluster) info(ctx context.Context, stdout io.Writer) (*shard.Cluster, error) {
	return lc.waitFor(ctx, stdout, func(*shard.Cluster) (string, error) { return "", nil })
}

// keepSpec rewrites DIR/cluster.json from metadata c, keeping the settings
// and listen addresses of the spec it replaces.
func (lc *localCluster) keepSpec(c *shard.Cluster) error {
	spec := server.SpecOf(c, lc.spec)
	if err := spec.Save(specPath(lc.dir)); err != nil {
		return err
	}
	lc.spec = spec
	return nil
}

// waitFor reads the metadata until pending, given it, returns "" (and
// then returns it). pending describes what is still to happen; the wait
// says it at most every progressInterval, and the error when ctx ends
// names it. A pending that fails ends the wait with its error.
func (lc *localCluster) waitFor(ctx context.Context, stdout io.Writer, pending func(*shard.Cluster) (string, error)) (*shard.Cluster, error) {
	start := time.Now()
	said := start
	// what is still pending by the newest metadata read; until there is
	// one, why there is none.
	what, fresh := "an answer from the cluster", false
	for {
		r, err := lc.admin(ctx, server.AdminInfo, nil)
		switch {
		case err != nil && !fresh:
			what = fmt.Sprintf("an answer from the cluster (%v)", err)
		case err != nil:
		case r.Cluster.Version < lc.floor && !fresh:
			what = fmt.Sprintf("metadata version %d to reach the nodes", lc.floor)
		case r.Cluster.Version < lc.floor:
		default:
			lc.saw(r.Cluster.Version)
			if what, err = pending(r.Cluster); err != nil {
				return nil, err
			}
			if what == "" {
				return r.Cluster, nil
			}
			fresh = true
		}
		if time.Since(said) >= progressInterval {
			fmt.Fprintf(stdout, "  %s: waiting for %s\n", time.Since(start).Round(time.Second), what)
			said = time.Now()
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("gave up after %s waiting for %s: %w", time.Since(start).Round(time.Second), what, ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}

// groupName names group id for people.
func groupName(id shard.ID) string {
	if id == shard.ControlGroup {
		return "the control group"
	}
	return "shard " + strconv.Itoa(int(id))
}

// moveDone is the pending of a wait for move m to end: "" once the
// metadata has no move of its group and m.To is among its voters. A move
// that ended otherwise (it was undone) is an error.
func moveDone(m shard.Move) func(*shard.Cluster) (string, error) {
	return func(c *shard.Cluster) (string, error) {
		if cur := c.MoveOf(m.Group); cur != nil {
			return fmt.Sprintf("the move of %s from %s to %s", groupName(cur.Group), cur.From, cur.To), nil
		}
		if !slices.Contains(c.Voters(m.Group), m.To) {
			return "", fmt.Errorf("the move of %s from %s to %s ended without %s among its voters (%s): it was undone; repeat it",
				groupName(m.Group), m.From, m.To, m.To, strings.Join(c.Voters(m.Group), ", "))
		}
		return "", nil
	}
}

// moveText says what move m does: "moving shard 1 from n1 to n4", or,
// for a replica added, "moving ... adding a replica on n3".
func moveText(verb string, m shard.Move) string {
	if m.From == "" {
		return fmt.Sprintf("%s %s: a replica added on %s", verb, groupName(m.Group), m.To)
	}
	return fmt.Sprintf("%s %s from %s to %s", verb, groupName(m.Group), m.From, m.To)
}

// nextNodeID returns the id for a new node: n(K+1), K the largest number
// of an id of the form nK among ids (members and removed nodes, which may
// not return), skipping those taken reports (a directory left behind).
func nextNodeID(ids []string, taken func(string) bool) string {
	k := 0
	for _, id := range ids {
		if rest, ok := strings.CutPrefix(id, "n"); ok {
			if v, err := strconv.Atoi(rest); err == nil && v > k {
				k = v
			}
		}
	}
	for {
		k++
		if id := "n" + strconv.Itoa(k); !taken(id) {
			return id
		}
	}
}

// freeAddrs picks a free TCP port for raft and a free UDP port for
// clients on 127.0.0.1, as server.LocalSpec does.
func freeAddrs() (raftAddr, clientAddr string, err error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", "", fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	u, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return "", "", fmt.Errorf("finding a free port: %w", err)
	}
	defer u.Close()
	return l.Addr().String(), u.LocalAddr().String(), nil
}

func clusterAddNode(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("cluster add-node", stderr)
	lf := elasticFlags(fs)
	id := fs.String("id", "", "the new node's `ID` (default: the next free nK)")
	if err := parseDirCommand(fs, args); err != nil {
		return err
	}
	if *id != "" {
		if err := server.CheckNodeID(*id); err != nil {
			return fmt.Errorf("%w: --id: %w", errUsage, err)
		}
	}
	ctx, lc, err := lf.open(ctx, stderr)
	if err != nil {
		return err
	}
	defer lc.close()
	c, err := lc.info(ctx, stdout)
	if err != nil {
		return err
	}
	if *id == "" {
		ids := slices.Clone(c.Removed)
		for _, n := range c.Nodes {
			ids = append(ids, n.ID)
		}
		for _, n := range lc.spec.Nodes {
			ids = append(ids, n.ID)
		}
		*id = nextNodeID(ids, func(id string) bool {
			_, err := os.Stat(dataPath(*lf.dir, id))
			return err == nil
		})
	}
	nd := shard.Node{ID: *id}
	if m := c.Node(*id); m != nil {
		nd = *m // added before, but not started: keep its addresses
	} else if nd.Raft, nd.Client, err = freeAddrs(); err != nil {
		return err
	}
	if !*lf.insecure {
		if _, err := certs.Ensure(tlsPath(*lf.dir), "shoal cluster "+*lf.dir, []string{nd.ID}); err != nil {
			return err
		}
	}
	r, err := lc.admin(ctx, server.AdminAddNode, &server.AdminArgs{Node: &nd})
	if err != nil {
		return fmt.Errorf("adding node %s: %w", nd.ID, err)
	}
	if err := server.KeepMetadata(dataPath(*lf.dir, nd.ID), r.Cluster); err != nil {
		return err
	}
	if err := lc.keepSpec(r.Cluster); err != nil {
		return err
	}
	if pid, err := readPid(pidPath(*lf.dir, nd.ID)); err == nil && running(pid) {
		fmt.Fprintf(stdout, "%s already running (pid %d)\n", nd.ID, pid)
	} else {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		exited := make(chan string, 1)
		if _, err := startNode(exe, *lf.dir, nd.ID, *lf.insecure, nodeEnv(len(lc.spec.Nodes)), exited); err != nil {
			return fmt.Errorf("starting %s: %w", nd.ID, err)
		}
		if err := waitServing(ctx, lc, nd, exited); err != nil {
			return fmt.Errorf("%w (see %s)", err, logPath(*lf.dir, nd.ID))
		}
	}
	fmt.Fprintf(stdout, "added node %s (raft %s, client %s)\n", nd.ID, nd.Raft, nd.Client)
	return nil
}

// waitServing waits until node nd answers clients, or exits.
func waitServing(ctx context.Context, lc *localCluster, nd shard.Node, exited <-chan string) error {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for {
		actx, cancel := context.WithTimeout(ctx, time.Second)
		c, err := client.New(actx, client.Config{Seeds: []string{nd.Client}, Secret: lc.keys, Insecure: lc.insecure, Logger: quiet})
		if err == nil {
			_, err = c.NodeStatus(actx, nd.ID)
			c.Close(context.Background())
		}
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s did not answer: %w", nd.ID, ctx.Err())
		case id := <-exited:
			return fmt.Errorf("node %s exited", id)
		case <-time.After(pollInterval):
		}
	}
}

func clusterMove(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("cluster move", stderr)
	lf := elasticFlags(fs)
	shardID := fs.Int("shard", -1, "the `ID` of the shard whose replica moves")
	control := fs.Bool("control", false, "move a replica of the control group instead of a shard's")
	from := fs.String("from", "", "the `NODE` the replica leaves; none adds a replica to a pair")
	to := fs.String("to", "", "the `NODE` the replica moves to")
	abort := fs.Bool("abort", false, "undo the shard's move in progress instead: its target leaves, its voters stay")
	if err := parseDirCommand(fs, args); err != nil {
		return err
	}
	m := shard.Move{Group: shard.ID(*shardID), From: *from, To: *to}
	switch {
	case *abort && (*from != "" || *to != ""):
		return fmt.Errorf("%w: --abort with --from or --to", errUsage)
	case *to == "" && !*abort:
		return fmt.Errorf("%w: --to is required", errUsage)
	case *control && *shardID >= 0:
		return fmt.Errorf("%w: --control with --shard", errUsage)
	case *control:
		m.Group = shard.ControlGroup
	case *shardID < 0 || int64(*shardID) >= int64(shard.ControlGroup):
		return fmt.Errorf("%w: --shard ID (or --control) is required", errUsage)
	}
	ctx, lc, err := lf.open(ctx, stderr)
	if err != nil {
		return err
	}
	defer lc.close()
	if *abort {
		return abortMove(ctx, lc, m.Group, stdout)
	}
	r, err := lc.admin(ctx, server.AdminMove, &server.AdminArgs{Move: &m})
	if err != nil {
		return fmt.Errorf("moving %s from %s to %s: %w", groupName(m.Group), m.From, m.To, err)
	}
	lc.saw(r.Cluster.Version)
	fmt.Fprintf(stdout, "%s\n", moveText("moving", m))
	c, err := lc.waitFor(ctx, stdout, moveDone(m))
	if err != nil {
		return err
	}
	if err := lc.keepSpec(c); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s\n", moveText("moved", m))
	return nil
}

func clusterRemoveNode(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("cluster remove-node", stderr)
	lf := elasticFlags(fs)
	grace := fs.Duration("grace", 15*time.Second, "how long the node's process may take to exit on its own once removed, before it is stopped (SIGTERM, then SIGKILL)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 1, "the ID of the node"); err != nil {
		return err
	}
	if *lf.dir == "" {
		return fmt.Errorf("%w: --dir is required", errUsage)
	}
	id := pos[0]
	ctx, lc, err := lf.open(ctx, stderr)
	if err != nil {
		return err
	}
	defer lc.close()
	c, err := lc.info(ctx, stdout)
	if err != nil {
		return err
	}
	// Run again after it timed out, or after the node was removed but its
	// process not stopped, the command finishes what is left: the cluster
	// refuses to remove a node it has removed.
	if !slices.Contains(c.Removed, id) {
		r, err := lc.admin(ctx, server.AdminRemoveNode, &server.AdminArgs{ID: id})
		if err != nil {
			return fmt.Errorf("removing node %s: %w", id, err)
		}
		lc.saw(r.Cluster.Version)
		fmt.Fprintf(stdout, "removing node %s: moving its replicas away\n", id)
	}
	c, err = lc.waitFor(ctx, stdout, func(c *shard.Cluster) (string, error) {
		if slices.Contains(c.Removed, id) {
			return "", nil
		}
		if len(c.Moves) > 0 {
			m := c.Moves[0]
			return fmt.Sprintf("node %s to be removed (moving %s from %s to %s)", id, groupName(m.Group), m.From, m.To), nil
		}
		return fmt.Sprintf("node %s to be removed", id), nil
	})
	if err != nil {
		return err
	}
	if err := lc.keepSpec(c); err != nil {
		return err
	}
	// A removed node exits on its own once it has deleted its replicas;
	// stopped sooner, it leaves them on disk.
	how := "was not running here"
	if pid, err := readPid(pidPath(*lf.dir, id)); err == nil && running(pid) {
		how = "exited"
		if !waitExit(pid, *grace) {
			how = stopProcess(pid, removedStopGrace)
		}
	}
	if err := os.Remove(pidPath(*lf.dir, id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	fmt.Fprintf(stdout, "removed node %s (its process %s)\n", id, how)
	return nil
}

// removedStopGrace bounds the wait for a removed node's process that did
// not exit on its own to stop on SIGTERM before it is killed.
const removedStopGrace = 5 * time.Second

// stopProcess stops process pid as `cluster down` does: SIGTERM, then
// SIGKILL if it has not exited within grace. It says which it took.
func stopProcess(pid int, grace time.Duration) string {
	_ = syscall.Kill(pid, syscall.SIGTERM)
	if waitExit(pid, grace) {
		return "stopped"
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	waitExit(pid, 5*time.Second)
	return "killed"
}

func clusterRebalance(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("cluster rebalance", stderr)
	lf := elasticFlags(fs)
	if err := parseDirCommand(fs, args); err != nil {
		return err
	}
	ctx, lc, err := lf.open(ctx, stderr)
	if err != nil {
		return err
	}
	defer lc.close()
	// A rebalance starts nothing while a move or a removal is in
	// progress; wait for those first, so that "none started" means
	// balanced.
	settled := func(c *shard.Cluster) (string, error) {
		if len(c.Moves) > 0 {
			m := c.Moves[0]
			return fmt.Sprintf("the move of %s from %s to %s", groupName(m.Group), m.From, m.To), nil
		}
		if len(c.Draining) > 0 {
			return "the removal of node " + strings.Join(c.Draining, ", "), nil
		}
		return "", nil
	}
	moves := 0
	for {
		c, err := lc.waitFor(ctx, stdout, settled)
		if err != nil {
			return err
		}
		r, err := lc.admin(ctx, server.AdminRebalance, nil)
		if err != nil {
			return fmt.Errorf("rebalancing: %w", err)
		}
		if r.Cluster.Version < c.Version {
			// The node that answered plans from metadata older than c:
			// its "nothing to do" says nothing. Ask again.
			select {
			case <-ctx.Done():
				return fmt.Errorf("rebalancing: no node with metadata version %d answered: %w", c.Version, ctx.Err())
			case <-time.After(pollInterval):
			}
			continue
		}
		lc.saw(r.Cluster.Version)
		if !r.Started {
			if err := lc.keepSpec(c); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "balanced after %d moves\n", moves)
			return nil
		}
		if len(r.Cluster.Moves) == 0 {
			continue // it has ended already
		}
		m := r.Cluster.Moves[0]
		fmt.Fprintf(stdout, "moving %s from %s to %s\n", groupName(m.Group), m.From, m.To)
		if _, err := lc.waitFor(ctx, stdout, moveDone(m)); err != nil {
			return err
		}
		moves++
	}
}

// slotMovesDone returns the pending check of slot moves from shard from
// (to shard to, if to is not nil): done once the metadata lists none.
func slotMovesDone(from shard.ID, to *shard.ID) func(*shard.Cluster) (string, error) {
	return func(c *shard.Cluster) (string, error) {
		left := 0
		for _, m := range c.SlotMoves {
			if m.From == from && (to == nil || m.To == *to) {
				left++
			}
		}
		if left == 0 {
			return "", nil
		}
		return fmt.Sprintf("%d slot moves from shard %d", left, from), nil
	}
}

func clusterSplit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("cluster split", stderr)
	lf := elasticFlags(fs)
	shardID := fs.Int("shard", -1, "the `ID` of the shard to split")
	if err := parseDirCommand(fs, args); err != nil {
		return err
	}
	if *shardID < 0 || int64(*shardID) >= int64(shard.ControlGroup) {
		return fmt.Errorf("%w: --shard ID is required", errUsage)
	}
	id := shard.ID(*shardID)
	ctx, lc, err := lf.open(ctx, stderr)
	if err != nil {
		return err
	}
	defer lc.close()
	r, err := lc.admin(ctx, server.AdminSplit, &server.AdminArgs{Shard: &id})
	if err != nil {
		return fmt.Errorf("splitting shard %d: %w", id, err)
	}
	lc.saw(r.Cluster.Version)
	fmt.Fprintf(stdout, "splitting shard %d: half its slots move to new shard %d\n", id, r.Shard)
	c, err := lc.waitFor(ctx, stdout, slotMovesDone(id, &r.Shard))
	if err != nil {
		return err
	}
	if err := lc.keepSpec(c); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "split shard %d: shard %d serves slots %s\n", id, r.Shard, rangesText(c.Map.RangesOf(r.Shard)))
	return nil
}

func clusterMoveSlots(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("cluster move-slots", stderr)
	lf := elasticFlags(fs)
	from := fs.Int("from", -1, "the `ID` of the shard the slots leave")
	to := fs.Int("to", -1, "the `ID` of the shard the slots move to")
	slots := fs.String("slots", "", "the slots to move, `A-B` inclusive (or one slot, A)")
	abort := fs.Bool("abort", false, "undo the slot moves in progress from --from (to --to, if given) instead")
	if err := parseDirCommand(fs, args); err != nil {
		return err
	}
	if *abort {
		return abortSlotMoves(ctx, lf, *from, *to, *slots, stdout, stderr)
	}
	start, end, err := parseSlots(*slots)
	switch {
	case err != nil:
		return fmt.Errorf("%w: --slots: %v", errUsage, err)
	case *from < 0 || *to < 0 || int64(*from) >= int64(shard.ControlGroup) || int64(*to) >= int64(shard.ControlGroup):
		return fmt.Errorf("%w: --from and --to shard ids are required", errUsage)
	}
	m := shard.SlotMove{From: shard.ID(*from), To: shard.ID(*to), Start: start, End: end}
	ctx, lc, err := lf.open(ctx, stderr)
	if err != nil {
		return err
	}
	defer lc.close()
	r, err := lc.admin(ctx, server.AdminMoveSlots, &server.AdminArgs{Slots: &m})
	if err != nil {
		return fmt.Errorf("moving slots %s: %w", *slots, err)
	}
	lc.saw(r.Cluster.Version)
	fmt.Fprintf(stdout, "moving slots %d-%d from shard %d to shard %d\n", start, end-1, m.From, m.To)
	c, err := lc.waitFor(ctx, stdout, slotMovesDone(m.From, &m.To))
	if err != nil {
		return err
	}
	if !c.Map.Owns(m.To, m.Start, m.End) {
		return fmt.Errorf("the move of slots %s ended, but shard %d does not own them", *slots, m.To)
	}
	if err := lc.keepSpec(c); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "moved slots %d-%d from shard %d to shard %d\n", start, end-1, m.From, m.To)
	return nil
}

// abortSlotMoves undoes the slot moves from shard from (to shard to, if
// not negative) and waits until they are gone: each source takes its range
// back, but one that dropped it already sees its move through.
func abortSlotMoves(ctx context.Context, lf *localFlags, from, to int, slots string, stdout, stderr io.Writer) error {
	switch {
	case slots != "":
		return fmt.Errorf("%w: --abort with --slots", errUsage)
	case from < 0 || int64(from) >= int64(shard.ControlGroup):
		return fmt.Errorf("%w: --abort needs the --from shard id", errUsage)
	case int64(to) >= int64(shard.ControlGroup):
		return fmt.Errorf("%w: --to %d is no shard id", errUsage, to)
	}
	src := shard.ID(from)
	args := &server.AdminArgs{Shard: &src}
	var dst *shard.ID
	if to >= 0 {
		d := shard.ID(to)
		args.To, dst = &d, &d
	}
	ctx, lc, err := lf.open(ctx, stderr)
	if err != nil {
		return err
	}
	defer lc.close()
	r, err := lc.admin(ctx, server.AdminAbortSlotMoves, args)
	if err != nil {
		return fmt.Errorf("undoing the slot moves from shard %d: %w", src, err)
	}
	lc.saw(r.Cluster.Version)
	for _, m := range r.Cluster.SlotMoves {
		if m.Abort && !m.Flipped && m.From == src && (dst == nil || m.To == *dst) {
			fmt.Fprintf(stdout, "undoing the move of slots %d-%d from shard %d to shard %d\n", m.Start, m.End-1, m.From, m.To)
		}
	}
	c, err := lc.waitFor(ctx, stdout, slotMovesDone(src, dst))
	if err != nil {
		return err
	}
	if err := lc.keepSpec(c); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "shard %d serves slots %s\n", src, rangesText(c.Map.RangesOf(src)))
	return nil
}

// parseSlots parses "A-B" (inclusive) or "A" into the range [start, end).
func parseSlots(s string) (start, end int, err error) {
	a, b, found := strings.Cut(s, "-")
	if !found {
		b = a
	}
	if start, err = strconv.Atoi(a); err != nil {
		return 0, 0, err
	}
	last, err := strconv.Atoi(b)
	if err != nil {
		return 0, 0, err
	}
	if start < 0 || last < start || last >= shard.SlotCount {
		return 0, 0, fmt.Errorf("%q is no range of slots 0 to %d", s, shard.SlotCount-1)
	}
	return start, last + 1, nil
}

// rangesText writes ranges as "A-B, C-D" (inclusive).
func rangesText(ranges []shard.Range) string {
	parts := make([]string, len(ranges))
	for i, r := range ranges {
		parts[i] = fmt.Sprintf("%d-%d", r.Start, r.End-1)
	}
	return strings.Join(parts, ", ")
}

// abortMove undoes the move of group id and waits until it is gone.
func abortMove(ctx context.Context, lc *localCluster, id shard.ID, stdout io.Writer) error {
	r, err := lc.admin(ctx, server.AdminAbortMove, &server.AdminArgs{Move: &shard.Move{Group: id}})
	if err != nil {
		return fmt.Errorf("undoing the move of %s: %w", groupName(id), err)
	}
	lc.saw(r.Cluster.Version)
	fmt.Fprintf(stdout, "undoing the move of %s\n", groupName(id))
	c, err := lc.waitFor(ctx, stdout, func(c *shard.Cluster) (string, error) {
		if m := c.MoveOf(id); m != nil {
			return moveText("undoing the move of", *m), nil
		}
		return "", nil
	})
	if err != nil {
		return err
	}
	if err := lc.keepSpec(c); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s holds its replicas on %s\n", groupName(id), strings.Join(c.Voters(id), " "))
	return nil
}
