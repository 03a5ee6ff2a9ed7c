package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"

	"github.com/shoal-kv/shoal/server"
	"github.com/shoal-kv/shoal/server/certs"
)

// certsCmd makes the credentials of a cluster: a CA, unless --out holds
// one, and a certificate and key for each node of the spec that has none;
// and the cluster's secret beside the spec, unless it has one, whose key
// id it lists in the spec. Copy ca.crt and a node's ID.crt and ID.key to
// its host, the CA key nowhere, and the secret to every node and client.
// With --id instead of --cluster, it issues with the CA in --out the
// certificates of nodes that are not in the spec, to join later.
func certsCmd(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("certs", stderr)
	cluster := fs.String("cluster", "", "cluster spec `FILE` (JSON) naming the nodes")
	ids := fs.String("id", "", "instead of --cluster: issue with the CA in --out a certificate for each node `ID`[,ID...], "+
		"for nodes that join a running cluster")
	out := fs.String("out", "", "`DIR` for ca.crt, ca.key and each node's ID.crt and ID.key (default: tls next to the --cluster file)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 0, "no arguments"); err != nil {
		return err
	}
	switch {
	case *ids != "" && *cluster != "":
		return fmt.Errorf("%w: --id or --cluster, not both", errUsage)
	case *ids != "" && *out == "":
		return fmt.Errorf("%w: --id needs --out, the directory holding the cluster's CA", errUsage)
	case *ids != "":
		return issueJoining(*out, strings.Split(*ids, ","), stdout)
	case *cluster == "":
		return fmt.Errorf("%w: --cluster (or --id with --out) is required", errUsage)
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

// issueJoining issues with the CA in dir a certificate and key for each
// of ids (certs.IssueFiles: nothing if one has them already), and says
// what each node's host needs.
func issueJoining(dir string, ids []string, stdout io.Writer) error {
	for i, id := range ids {
		if err := server.CheckNodeID(id); err != nil {
			return fmt.Errorf("%w: --id: %w", errUsage, err)
		}
		if slices.Contains(ids[:i], id) {
			return fmt.Errorf("%w: --id names %s twice", errUsage, id)
		}
	}
	wrote, err := certs.IssueFiles(dir, ids)
	for _, f := range wrote {
		fmt.Fprintf(stdout, "wrote %s\n", f)
	}
	if errors.Is(err, certs.ErrNoCA) {
		return fmt.Errorf("%w (shoal certs --cluster FILE --out %s makes one, with the certificates of the spec's nodes)", err, dir)
	}
	if err != nil {
		return err
	}
	for _, id := range ids {
		certFile, keyFile := certs.NodeFiles(dir, id)
		fmt.Fprintf(stdout, "for node %s: copy %s, %s and %s to its host's --tls-dir, and the cluster's secret to its --secret-file; %s stays here\n",
			id, filepath.Join(dir, certs.CACertFile), certFile, keyFile, certs.CAKeyFile)
	}
	return nil
}
