package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"

	"github.com/shoal-kv/shoal/server"
	"github.com/shoal-kv/shoal/server/certs"
)

// certsCmd makes the credentials of a cluster: a CA, unless --out holds
// one, and a certificate and key for each node of the spec that has none;
// and the cluster's secret beside the spec, unless it has one, whose key
// id it lists in the spec. Copy ca.crt and a node's ID.crt and ID.key to
// its host, the CA key nowhere, and the secret to every node and client.
func certsCmd(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("certs", stderr)
	cluster := fs.String("cluster", "", "cluster spec `FILE` (JSON) naming the nodes")
	out := fs.String("out", "", "`DIR` for ca.crt, ca.key and each node's ID.crt and ID.key (default: tls next to the --cluster file)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 0, "no arguments"); err != nil {
		return err
	}
	if *cluster == "" {
		return fmt.Errorf("%w: --cluster is required", errUsage)
	}
	spec, err := server.LoadSpec(*cluster)
	if err != nil {
		return err
	}
	dir := *out
	if dir == "" {
		dir = filepath.Join(filepath.Dir(*cluster), "tls")
	}
	name, _ := filepath.Abs(*cluster)
	wrote, err := certs.Ensure(dir, "shoal cluster "+name, nodeIDs(spec))
	for _, f := range wrote {
		fmt.Fprintf(stdout, "wrote %s\n", f)
	}
	if err != nil {
		return err
	}
	if len(wrote) == 0 {
		fmt.Fprintf(stdout, "%s already holds a CA and a certificate for every node\n", dir)
	}
	_, made, err := ensureSecret(*cluster, spec)
	if err != nil {
		return err
	}
	if made {
		fmt.Fprintf(stdout, "wrote %s (key id %s, listed in %s)\n", secretPath(*cluster), spec.SecretIDs[0], *cluster)
	}
	return nil
}
