// Command shoal runs shoal nodes and local clusters, talks to a cluster from
// the shell, and runs the demo.
//
//	shoal demo                                  the main job on an embedded cluster
//	shoal server --id ID --data DIR --cluster FILE [--tls-dir DIR | --insecure]
//	shoal server --id ID --data DIR --join ADDRS --raft ADDR --client ADDR
//	shoal certs --cluster FILE [--out DIR]
//	shoal certs --out DIR --id ID[,ID...]
//	shoal cluster up --dir DIR [--nodes 3 --shards 4 --replicas 3]
//	shoal cluster down --dir DIR
//	shoal cluster status --cluster FILE
//	shoal cluster add-node | move | remove-node | rebalance --dir DIR
//	shoal get KEY | set KEY VALUE | del KEY     with --cluster FILE, --seeds or SHOAL_SEEDS
//	shoal enqueue | acquire | extend | complete | fail | requeue | jobs
//	shoal bench [--op OP --shards N --clients C --duration D --cluster FILE --json]
//	shoal sim list | EXPERIMENT [--seed N --seeds N --quick --out DIR]
//
// Run `shoal help` for the flags of each.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/shoal-kv/shoal/server"
)

const usage = `shoal: a sharded, replicated key-value store

Usage:
  shoal demo [--log]                              start an embedded 3-node cluster, drive it
                                                  over a lossy link, kill a node, report
  shoal server --id ID --data DIR --cluster FILE [--tls-dir DIR | --insecure]
                                                  run one node; its certificate and the
                                                  CA's in DIR (default: tls next to FILE)
  shoal server --id ID --data DIR --join ADDRS --raft ADDR --client ADDR
               [--cluster FILE] [--tls-dir DIR --secret-file F | --insecure]
                                                  join a running cluster through the client
                                                  ADDRS of some of its nodes, as a new node
                                                  reached at ADDR (raft, TCP) and ADDR
                                                  (clients, UDP); again with the same flags,
                                                  it restarts as the same node. A node exits 1
                                                  once the cluster has removed it
  shoal certs --cluster FILE [--out DIR]          make a cluster CA (unless DIR has one) and
                                                  each node's certificate and key
  shoal certs --out DIR --id ID[,ID...]           issue with DIR's CA the certificate and key
                                                  of each node ID, to join later
  shoal cluster up --dir DIR [--nodes N --shards S --replicas R]
                                                  start a local cluster of processes, with
                                                  certificates in DIR/tls
  shoal cluster down --dir DIR                    stop it
  shoal cluster status (--cluster FILE | --seeds ADDRS)
                                                  nodes, shards, leaders, load, metadata
                                                  version, moves in progress
  shoal cluster add-node --dir DIR [--id ID]      add a node to the local cluster and start it
  shoal cluster move --dir DIR (--shard S | --control) [--from A] --to B
                                                  move a replica of shard S (or of the control
                                                  group) from node A to node B, online; without
                                                  --from, add one on B (a pair grows to a trio);
                                                  with --abort instead of --from and --to, undo
                                                  the move in progress
  shoal cluster remove-node --dir DIR ID          move node ID's replicas away, drop it; its
                                                  process exits (or is stopped after --grace)
  shoal cluster rebalance --dir DIR               move replicas until every node holds its share
  shoal cluster split --dir DIR --shard S         make a new shard and move half of S's slots
                                                  to it, online
  shoal cluster move-slots --dir DIR --from S (--to T --slots A-B | --abort [--to T])
                                                  move slots A to B (inclusive) from shard S
                                                  to shard T, online; with --abort, undo the
                                                  slot moves from S in progress
                                                  (these six wait up to --timeout, default 2m,
                                                  and then rewrite DIR/cluster.json)
  shoal get KEY [--stale]                         print the value of KEY
  shoal set KEY VALUE                             store VALUE under KEY
  shoal del KEY                                   delete KEY
  shoal enqueue TOPIC PAYLOAD [--delay D] [--key K] [--max-attempts N]
                                                  store a job; prints its id
  shoal acquire TOPIC [--lease 30s] [--wait 5s]   lease the next ready job; prints
                                                  ID LEASE ATTEMPT DEADLINE, then the payload
  shoal extend ID LEASE [--lease D]               keep the job longer
  shoal complete ID LEASE                         finish the job
  shoal fail ID LEASE [--reason R]                fail it: retried with backoff, or dead
  shoal requeue ID                                queue a dead job again
  shoal jobs TOPIC [--dead]                       counts by state (and the dead jobs)
  shoal bench [--op OP --shards N --clients C --duration 10s] [--cluster FILE] [--json]
                                                  closed-loop throughput, latency, CPU and
                                                  memory (default: the whole grid)
  shoal sim list                                  the experiments
  shoal sim EXPERIMENT [--seed 1] [--seeds N] [--quick] [--out sim-out]
                                                  run one: a report checked against theory,
                                                  CSV and PNG files; exit 1 if a check fails

The commands that talk to a cluster find it by --cluster FILE (a cluster.json),
--seeds host:port,..., or the SHOAL_SEEDS (or SHOAL_CLUSTER) environment variable.
They take --json for machine-readable output and --timeout (default 5s).
Exit status: 0 success, 1 failure (a missing key included), 2 usage error,
3 the cluster removed the node (shoal server: a supervisor should not
restart it).
`

// exitRemoved is the exit status of a node the cluster removed, running
// or refused at start: distinct, so that a supervisor can be told not to
// restart it (systemd's RestartPreventExitStatus=3).
const exitRemoved = 3

// errUsage marks a command line that does not parse; main exits 2 for it.
var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes one command line and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmds := map[string]func(context.Context, []string, io.Writer, io.Writer) error{
		"demo":     demoCmd,
		"server":   serverCmd,
		"cluster":  clusterCmd,
		"certs":    certsCmd,
		"get":      getCmd,
		"set":      setCmd,
		"del":      delCmd,
		"enqueue":  enqueueCmd,
		"acquire":  acquireCmd,
		"extend":   extendCmd,
		"complete": completeCmd,
		"fail":     failCmd,
		"requeue":  requeueCmd,
		"jobs":     jobsCmd,
		"sim":      simCmd,
		"bench":    benchCmd,
	}
	name := args[0]
	if name == "help" || name == "-h" || name == "--help" {
		fmt.Fprint(stdout, usage)
		return 0
	}
	cmd, ok := cmds[name]
	if !ok {
		fmt.Fprintf(stderr, "shoal: unknown command %q\n\n%s", name, usage)
		return 2
	}
	err := cmd(ctx, args[1:], stdout, stderr)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "shoal %s: %v\n", name, err)
		return 2
	case errors.Is(err, server.ErrRemoved):
		fmt.Fprintf(stderr, "shoal %s: %v\n", name, err)
		return exitRemoved
	default:
		fmt.Fprintf(stderr, "shoal %s: %v\n", name, err)
		return 1
	}
}

// parseArgs parses flags that may come before, between or after the
// positional arguments (as in `shoal get KEY --json`), and returns the
// positional ones; everything after "--" is positional.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		rest := fs.Args()
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// newFlagSet returns a flag set that reports errors instead of exiting.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("shoal "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// wantArgs checks the number of positional arguments.
func wantArgs(pos []string, n int, form string) error {
	if len(pos) != n {
		return fmt.Errorf("%w: want %s, got %d argument(s)", errUsage, form, len(pos))
	}
	return nil
}
