package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/server"
	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/wire"
)

// joinTimeout bounds a joining node's wait for the cluster to register
// it.
const joinTimeout = time.Minute

// shutdownGrace bounds handing leadership over when a node is told to stop.
const shutdownGrace = 5 * time.Second

func serverCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("server", stderr)
	id := fs.String("id", "", "this node's `ID` in the cluster spec")
	data := fs.String("data", "", "data `DIR` for the node's raft logs and snapshots")
	cluster := fs.String("cluster", "", "cluster spec `FILE` (JSON); optional with --join")
	join := fs.String("join", "", "join a running cluster through the client `ADDRS` (host:port,...) of some of its nodes, "+
		"as a new node at --raft and --client; restarting with the same flags rejoins as the same node")
	raftAddr := fs.String("raft", "", "with --join: the TCP `ADDR` (host:port) the node listens at for raft and its peers")
	clientAddr := fs.String("client", "", "with --join: the UDP `ADDR` (host:port) the node serves clients at")
	level := fs.String("log-level", "info", "log level: debug, info, warn or error")
	pprofAddr := fs.String("pprof", "", "serve Go's profiles (net/http/pprof) on `ADDR`, e.g. 127.0.0.1:6060; off when empty")
	secretFile := fs.String("secret-file", "", "the cluster's secret `FILE` (default: $SHOAL_SECRET_FILE, or secret beside --cluster)")
	tlsDir := fs.String("tls-dir", "", "`DIR` holding the cluster CA (ca.crt) and this node's ID.crt and ID.key (default: tls next to the --cluster file)")
	insecure := fs.Bool("insecure", false, "serve without authentication, clients' datagrams unsealed and node-to-node traffic in plain TCP: for a trusted network only")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 0, "no arguments"); err != nil {
		return err
	}
	switch {
	case *id == "" || *data == "":
		return fmt.Errorf("%w: --id and --data are required", errUsage)
	case *join == "" && *cluster == "":
		return fmt.Errorf("%w: --cluster (or --join) is required", errUsage)
	case *join == "" && (*raftAddr != "" || *clientAddr != ""):
		return fmt.Errorf("%w: --raft and --client go with --join (a node of a spec listens at the spec's addresses)", errUsage)
	case *join != "" && (*raftAddr == "" || *clientAddr == ""):
		return fmt.Errorf("%w: --join needs the node's own addresses, --raft and --client", errUsage)
	case *join != "" && *cluster == "" && !*insecure && *tlsDir == "":
		return fmt.Errorf("%w: --join without --cluster needs --tls-dir (or --insecure)", errUsage)
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		return fmt.Errorf("%w: --log-level: %v", errUsage, err)
	}
	var spec *server.Spec
	if *cluster != "" {
		if spec, err = server.LoadSpec(*cluster); err != nil {
			return err
		}
	}
	cfg := server.Config{ID: *id, DataDir: *data, Spec: spec, Insecure: *insecure}
	if *insecure && (*secretFile != "" || *tlsDir != "") {
		return fmt.Errorf("%w: --insecure with --secret-file or --tls-dir", errUsage)
	}
	if !*insecure {
		if cfg.Secret, err = loadSecret(*secretFile, *cluster, spec); err != nil {
			return fmt.Errorf("%w (or run with --insecure, for a trusted network only)", err)
		}
		dir := *tlsDir
		if dir == "" {
			dir = filepath.Join(filepath.Dir(*cluster), "tls")
		}
		if cfg.PeerTLS, err = server.LoadPeerTLS(dir, *id); err != nil {
			return fmt.Errorf("%w (make them with shoal certs, or run with --insecure on a trusted network)", err)
		}
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	cfg.Logger = log
	if *pprofAddr != "" {
		stop, err := servePprof(*pprofAddr, log)
		if err != nil {
			return err
		}
		defer stop()
	}
	if *insecure {
		log.Warn("running insecure: clients and peers are not authenticated")
	}
	if *join != "" {
		nd := shard.Node{ID: *id, Raft: *raftAddr, Client: *clientAddr}
		if cfg.Spec, err = joinCluster(ctx, strings.Split(*join, ","), nd, *data, cfg.Secret, log); err != nil {
			return err
		}
		// The cluster knows the addresses others reach the node at; where
		// it binds, if elsewhere, only --cluster says.
		if own := cfg.Spec.Node(*id); own != nil && spec != nil {
			if given := spec.Node(*id); given != nil {
				own.RaftListen, own.ClientListen = given.RaftListen, given.ClientListen
			}
		}
	}
	n, err := server.Start(ctx, cfg)
	if err != nil {
		return err
	}
	select {
	case <-ctx.Done(): // SIGINT or SIGTERM
	case <-n.Done():
		// The node stopped serving on its own: the cluster removed it, and
		// it holds nothing to hand over. The process exits with
		// exitRemoved, which a supervisor can be told not to restart on
		// (a restart would be refused, with the same status).
		return errors.Join(n.Err(), n.Close())
	}
	c := n.Counters()
	log.Info("stopping: handing over leadership", "requests", c.Requests, "malformed", c.Malformed,
		"busy", c.Busy, "long_polls_refused", c.LongPollsRefused, "heartbeat_clients_evicted", c.HeartbeatClientsEvicted,
		"joined", c.Joined)
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	err = n.Shutdown(sctx)
	if errors.Is(err, server.ErrHandover) {
		// Expected when the whole cluster stops at once; the node has
		// stopped cleanly all the same.
		log.Warn("stopped without handing over every shard", "err", err)
		return nil
	}
	return err
}

// joinCluster registers node nd with the cluster whose nodes serve
// clients at seeds (server.AdminAddNode, which does nothing for a member
// with the same addresses, so a node restarted with the same flags joins
// again as itself), keeps the metadata it answers in dataDir, which names
// the node a member, and returns the spec the node starts with. keys is
// nil for an insecure cluster.
func joinCluster(ctx context.Context, seeds []string, nd shard.Node, dataDir string, keys *wire.Keyring, log *slog.Logger) (*server.Spec, error) {
	ctx, cancel := context.WithTimeout(ctx, joinTimeout)
	defer cancel()
	c, err := client.New(ctx, client.Config{Seeds: seeds, Secret: keys, Insecure: keys == nil, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("joining the cluster at %s: %w", strings.Join(seeds, ","), err)
	}
	defer c.Close(context.Background())
	var r server.AdminReply
	if err := c.Admin(ctx, server.AdminAddNode, &server.AdminArgs{Node: &nd}, &r); err != nil {
		return nil, fmt.Errorf("joining the cluster at %s as %s: %w", strings.Join(seeds, ","), nd.ID, err)
	}
	if r.Cluster == nil || r.Spec == nil {
		return nil, fmt.Errorf("joining the cluster at %s: the answer holds no metadata", strings.Join(seeds, ","))
	}
	if err := server.KeepMetadata(dataDir, r.Cluster); err != nil {
		return nil, err
	}
	if keys != nil {
		if err := r.Spec.CheckSecret(keys); err != nil {
			return nil, err
		}
	}
	log.Info("joined the cluster", "id", nd.ID, "raft", nd.Raft, "client", nd.Client, "metadata_version", r.Cluster.Version)
	return r.Spec, nil
}
