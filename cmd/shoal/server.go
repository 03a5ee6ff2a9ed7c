package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/shoal-kv/shoal/server"
)

// shutdownGrace bounds handing leadership over when a node is told to stop.
const shutdownGrace = 5 * time.Second

func serverCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("server", stderr)
	id := fs.String("id", "", "this node's `ID` in the cluster spec")
	data := fs.String("data", "", "data `DIR` for the node's raft logs and snapshots")
	cluster := fs.String("cluster", "", "cluster spec `FILE` (JSON)")
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
	if *id == "" || *data == "" || *cluster == "" {
		return fmt.Errorf("%w: --id, --data and --cluster are required", errUsage)
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		return fmt.Errorf("%w: --log-level: %v", errUsage, err)
	}
	spec, err := server.LoadSpec(*cluster)
	if err != nil {
		return err
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
	n, err := server.Start(ctx, cfg)
	if err != nil {
		return err
	}
	<-ctx.Done() // SIGINT or SIGTERM
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
