package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/server"
	"github.com/shoal-kv/shoal/server/servertest"
	"github.com/shoal-kv/shoal/wire"
)

func TestParseArgs(t *testing.T) {
	for _, tc := range []struct {
		args []string
		pos  string
		json bool
	}{
		{[]string{"k"}, "[k]", false},
		{[]string{"--json", "k"}, "[k]", true},
		{[]string{"k", "--json"}, "[k]", true},
		{[]string{"k", "v", "--json"}, "[k v]", true},
		{[]string{"--", "-k", "--json"}, "[-k --json]", false},
		{[]string{"k", "--", "-v"}, "[k -v]", false},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		j := fs.Bool("json", false, "")
		pos, err := parseArgs(fs, tc.args)
		if err != nil || fmt.Sprint(pos) != tc.pos || *j != tc.json {
			t.Errorf("parseArgs(%q) = %v, json %v, %v; want %s, json %v", tc.args, pos, *j, err, tc.pos, tc.json)
		}
	}
}

// shoal runs one command line in-process and returns its exit status and
// outputs.
func shoal(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// startCluster starts a cluster of 3 nodes holding 2 shards of 3 replicas
// for the test, and writes its spec, with the ids of its secret, to the
// cluster.json it returns, beside the secret.
func startCluster(t *testing.T) (*server.Spec, string) {
	t.Helper()
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 2, Replicas: 3,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	spec := *c.Spec()
	spec.SecretIDs = c.Secret().IDs()
	file := filepath.Join(c.Dir(), "cluster.json")
	if err := spec.Save(file); err != nil {
		t.Fatal(err)
	}
	return &spec, file
}

func TestCLICommands(t *testing.T) {
	spec, file := startCluster(t)
	seeds := strings.Join(seedsOf(spec), ",")

	if code, out, errs := shoal("set", "--cluster", file, "color", "blue"); code != 0 || out != "OK\n" {
		t.Fatalf("set: %d %q %q", code, out, errs)
	}
	t.Setenv("SHOAL_SECRET_FILE", secretPath(file))
	if code, out, _ := shoal("get", "color", "--seeds", seeds); code != 0 || out != "blue\n" {
		t.Errorf("get: %d %q, want blue", code, out)
	}
	t.Setenv("SHOAL_SEEDS", seeds)
	code, out, _ := shoal("get", "--json", "color")
	var got map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil || got["value"] != "blue" || got["key"] != "color" || got["version"] == nil {
		t.Errorf("get --json: %d %q", code, out)
	}
	code, out, _ = shoal("set", "--json", "bin", "\xff\xfe")
	if code != 0 || !strings.Contains(out, `"version"`) {
		t.Errorf("set --json: %d %q", code, out)
	}
	code, out, _ = shoal("get", "--json", "bin")
	if code != 0 || !strings.Contains(out, `"value_base64":"//4="`) {
		t.Errorf("get --json of a binary value: %d %q", code, out)
	}
	if code, out, errs := shoal("get", "missing"); code != 1 || out != "" || !strings.Contains(errs, "not found") {
		t.Errorf("get of a missing key: %d %q %q; want exit 1, nothing on stdout, an error on stderr", code, out, errs)
	}
	if code, out, _ := shoal("del", "color"); code != 0 || out != "OK\n" {
		t.Errorf("del: %d %q", code, out)
	}
	if code, _, errs := shoal("del", "color"); code != 1 || !strings.Contains(errs, "not found") {
		t.Errorf("second del: %d %q", code, errs)
	}
	if code, out, _ := shoal("cluster", "status"); code != 0 || !strings.Contains(out, "SHARD") || strings.Contains(out, "none") {
		t.Errorf("cluster status: %d\n%s", code, out)
	}
	code, out, _ = shoal("cluster", "status", "--json")
	var st clusterView
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st.Nodes) != 3 || len(st.Shards) != 2 || len(st.leaderless()) != 0 {
		t.Errorf("cluster status --json: %d %q", code, out)
	}
	if md := st.Metadata; md == nil || md.Err != "" || md.Version == 0 || len(md.Control) != 3 {
		t.Errorf("cluster status --json: metadata %+v, want a version and 3 control voters", md)
	}
	for _, args := range [][]string{
		{}, {"frobnicate"}, {"get"}, {"get", "a", "b"}, {"set", "k"}, {"get", "--bogus", "k"},
		{"cluster"}, {"cluster", "sideways"}, {"cluster", "up"}, {"server", "--id", "n1"}, {"certs"},
		{"cluster", "add-node"}, {"cluster", "add-node", "--dir", "d", "--id", "../n9"},
		{"cluster", "move", "--dir", "d", "--shard", "1"},
		{"cluster", "move", "--dir", "d", "--from", "n1", "--to", "n4"},
		{"cluster", "move", "--dir", "d", "--control", "--shard", "0", "--from", "n1", "--to", "n4"},
		{"cluster", "remove-node", "--dir", "d"}, {"cluster", "rebalance", "extra", "--dir", "d"},
		{"cluster", "move-slots", "--dir", "d", "--abort"},
		{"cluster", "move-slots", "--dir", "d", "--abort", "--from", "0", "--slots", "1-2"},
		{"server", "--id", "n9", "--data", "d", "--join", "127.0.0.1:1"},
		{"server", "--id", "n9", "--data", "d", "--cluster", "f", "--raft", "127.0.0.1:1"},
	} {
		if code, _, _ := shoal(args...); code != 2 {
			t.Errorf("shoal %q: exit %d, want 2 for a usage error", args, code)
		}
	}
	t.Setenv("SHOAL_SEEDS", "")
	if code, _, errs := shoal("get", "k"); code != 2 || !strings.Contains(errs, "--cluster") {
		t.Errorf("no cluster given: %d %q", code, errs)
	}
}

func TestDemo(t *testing.T) {
	code, out, errs := shoal("demo", "--phase", "700ms")
	t.Logf("demo output:\n%s", out)
	if code != 0 {
		t.Fatalf("demo exited %d: %s", code, errs)
	}
	for _, want := range []string{"before the kill", "killed n", "after the kill", "recovery: ", "check: all", "share of requests"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
}

// A client without the cluster's secret fails at once, saying so, with
// exit status 1: one without any, and one with another secret that the
// cluster's spec does not list.
func TestCLIAuthentication(t *testing.T) {
	spec, file := startCluster(t)
	seeds := strings.Join(seedsOf(spec), ",")
	t.Setenv("SHOAL_SECRET_FILE", "")
	wrong := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(wrong, wire.NewSecret(), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"get", "k", "--seeds", seeds},
		{"get", "k", "--cluster", file, "--secret-file", wrong},
		{"get", "k", "--cluster", file, "--secret-file", filepath.Join(t.TempDir(), "missing")},
	} {
		start := time.Now()
		code, out, errs := shoal(append(args, "--timeout", "10s")...)
		if code != 1 || out != "" || !strings.Contains(errs, "authentication failed") {
			t.Errorf("shoal %q: %d %q %q; want exit 1 and authentication failed", args, code, out, errs)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("shoal %q took %v of its 10s timeout", args, d)
		}
	}
	t.Setenv("SHOAL_SECRET_FILE", wrong)
	if code, _, errs := shoal("get", "k", "--cluster", file); code != 1 || !strings.Contains(errs, "authentication failed") {
		t.Errorf("with SHOAL_SECRET_FILE naming another secret: %d %q", code, errs)
	}
	if code, _, errs := shoal("get", "k", "--cluster", file, "--insecure", "--secret-file", wrong); code != 2 {
		t.Errorf("--insecure with --secret-file: exit %d %q, want 2", code, errs)
	}
}

func TestCLIJobs(t *testing.T) {
	spec, file := startCluster(t)
	t.Setenv("SHOAL_SEEDS", strings.Join(seedsOf(spec), ","))
	t.Setenv("SHOAL_SECRET_FILE", secretPath(file))
	code, out, errs := shoal("enqueue", "mail", "hi there")
	if code != 0 || !strings.HasPrefix(out, "j") {
		t.Fatalf("enqueue: %d %q %q", code, out, errs)
	}
	id := strings.TrimSpace(out)
	code, out, errs = shoal("acquire", "mail", "--json", "--lease", "20s")
	var j struct {
		ID, Topic, Payload, Deadline, Lease string
		Attempt                             int
		Token                               uint64
	}
	if code != 0 || json.Unmarshal([]byte(out), &j) != nil || j.ID != id || j.Topic != "mail" || j.Payload != "hi there" ||
		j.Attempt != 1 || j.Token == 0 || j.Deadline == "" || !strings.HasPrefix(j.Lease, fmt.Sprint(j.Token, ":")) {
		t.Fatalf("acquire --json: %d %q %q", code, out, errs)
	}
	tok := j.Lease
	// The token alone, or with another grant, ends nothing.
	for _, forged := range []string{fmt.Sprint(j.Token), fmt.Sprintf("%d:%016x", j.Token, 12345)} {
		if code, _, _ := shoal("complete", id, forged); code == 0 {
			t.Errorf("complete %s %s: exit 0", id, forged)
		}
	}
	if code, out, _ := shoal("extend", id, tok, "--lease", "30s"); code != 0 || out != "OK\n" {
		t.Errorf("extend: %d %q", code, out)
	}
	if code, out, _ := shoal("jobs", "mail", "--json"); code != 0 || !strings.Contains(out, `"leased":1`) {
		t.Errorf("jobs: %d %q", code, out)
	}
	if code, out, _ := shoal("complete", id, tok); code != 0 || out != "OK\n" {
		t.Errorf("complete: %d %q", code, out)
	}
	if code, _, errs := shoal("complete", id, tok); code != 1 || !strings.Contains(errs, "lease lost") {
		t.Errorf("second complete: %d %q; want exit 1 and lease lost", code, errs)
	}
	if code, out, errs := shoal("acquire", "mail", "--wait", "300ms"); code != 1 || out != "" || !strings.Contains(errs, "no job") {
		t.Errorf("acquire with nothing ready: %d %q %q", code, out, errs)
	}
	shoal("enqueue", "flaky", "x", "--max-attempts", "1")
	code, out, _ = shoal("acquire", "flaky")
	fields := strings.Fields(out)
	if code != 0 || len(fields) < 2 {
		t.Fatalf("acquire: %d %q", code, out)
	}
	if code, _, errs := shoal("fail", fields[0], fields[1], "--reason", "no smtp"); code != 0 {
		t.Fatalf("fail: %d %q", code, errs)
	}
	if code, out, _ := shoal("jobs", "flaky", "--dead"); code != 0 || !strings.Contains(out, "no smtp") {
		t.Errorf("jobs --dead: %d %q", code, out)
	}
	if code, _, _ := shoal("requeue", fields[0]); code != 0 {
		t.Errorf("requeue: %d", code)
	}
	if code, _, _ := shoal("extend", "x", "notanumber"); code != 2 {
		t.Errorf("extend with a bad token: exit %d, want 2", code)
	}
}

func TestSimCommand(t *testing.T) {
	code, out, _ := shoal("sim", "list")
	if code != 0 {
		t.Fatalf("sim list: exit %d", code)
	}
	for _, name := range []string{"loss", "herd", "balance", "failover", "scale", "linearizability", "rebalance"} {
		if !strings.Contains(out, name+" ") {
			t.Errorf("sim list does not name %s:\n%s", name, out)
		}
	}
	if code, _, errOut := shoal("sim", "nope"); code != 2 || !strings.Contains(errOut, "unknown experiment") {
		t.Errorf("sim nope: exit %d, %q", code, errOut)
	}
	if code, _, _ := shoal("sim", "loss", "--seeds", "-1"); code != 2 {
		t.Errorf("sim loss --seeds -1: exit %d", code)
	}
}

func isNumber(v any) bool {
	_, ok := v.(float64)
	return ok
}

// One point against an existing cluster: a JSON object with the fields
// the grid promises; without pid files, no CPU or memory.
func TestBenchPointOnExistingCluster(t *testing.T) {
	_, file := startCluster(t)
	code, out, errs := shoal("bench", "--cluster", file, "--op", "mixed", "--clients", "4", "--duration", "500ms", "--json")
	if code != 0 {
		t.Fatalf("bench: exit %d: %s", code, errs)
	}
	var p map[string]any
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		t.Fatalf("%q: %v", out, err)
	}
	if p["op"] != "mixed" || p["shards"] != 2.0 || p["clients"] != 4.0 || !(p["ops_per_sec"].(float64) > 0) ||
		!(p["p50_us"].(float64) > 0) || !(p["p99_us"].(float64) >= p["p50_us"].(float64)) || p["cpu_us_per_op"] != 0.0 ||
		!isNumber(p["retries"]) || !isNumber(p["timeouts"]) {
		t.Errorf("point %v\n%s", p, errs)
	}
	if !strings.Contains(errs, "CPU and memory are not measured") {
		t.Errorf("stderr does not say CPU is not measured: %q", errs)
	}
	for _, args := range [][]string{{"--op", "put"}, {"--clients", "-1"}, {"--cluster", file, "--shards", "2"}} {
		if code, _, _ := shoal(append([]string{"bench"}, args...)...); code != 2 {
			t.Errorf("bench %v: exit %d, want 2", args, code)
		}
	}
}

func TestNodeEnvSharesTheCores(t *testing.T) {
	t.Setenv("GOMAXPROCS", "")
	os.Unsetenv("GOMAXPROCS")
	want := "GOMAXPROCS=" + strconv.Itoa(max(1, runtime.GOMAXPROCS(0)/3))
	if env := nodeEnv(3); !slices.Contains(env, want) {
		t.Errorf("nodeEnv(3) lacks %s", want)
	}
	if env := nodeEnv(1000); !slices.Contains(env, "GOMAXPROCS=1") {
		t.Error("nodeEnv(1000) lacks GOMAXPROCS=1")
	}

	t.Setenv("GOMAXPROCS", "7")
	if !slices.Contains(nodeEnv(3), "GOMAXPROCS=7") {
		t.Error("nodeEnv dropped the caller's GOMAXPROCS=7")
	}
	for _, kv := range nodeEnv(3) {
		if strings.HasPrefix(kv, "GOMAXPROCS=") && kv != "GOMAXPROCS=7" {
			t.Errorf("nodeEnv overrode the caller's GOMAXPROCS=7 with %s", kv)
		}
	}
}

// savePairSpec writes the spec of a local pair with one shard to
// dir/cluster.json, and returns the file.
func savePairSpec(t *testing.T, dir string) string {
	t.Helper()
	spec, err := server.LocalSpec(2, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	specFile := filepath.Join(dir, "cluster.json")
	if err := spec.Save(specFile); err != nil {
		t.Fatal(err)
	}
	return specFile
}

// shoal certs makes a CA and each node's credentials, keys private, and
// the cluster's secret, listed in the spec, and keeps what exists when run
// again; shoal server refuses to start without credentials unless told
// --insecure.
func TestCertsAndServerCredentials(t *testing.T) {
	dir := t.TempDir()
	specFile := savePairSpec(t, dir)
	code, _, errs := shoal("server", "--id", "n1", "--data", filepath.Join(dir, "n1"), "--cluster", specFile)
	if code != 1 || !strings.Contains(errs, "authentication failed: no secret") || !strings.Contains(errs, "--insecure") {
		t.Errorf("server without credentials: exit %d, %q", code, errs)
	}
	code, out, errs := shoal("certs", "--cluster", specFile)
	if code != 0 {
		t.Fatalf("certs: exit %d, %s", code, errs)
	}
	tlsDir := filepath.Join(dir, "tls")
	for _, f := range []string{"tls/ca.crt", "tls/ca.key", "tls/n1.crt", "tls/n1.key", "tls/n2.crt", "tls/n2.key", "secret"} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatalf("certs did not write %s: %v\n%s", f, err, out)
		}
		if (strings.HasSuffix(f, ".key") || f == "secret") && fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", f, fi.Mode().Perm())
		}
	}
	keys, err := wire.LoadKeyring(filepath.Join(dir, "secret"))
	if err != nil {
		t.Fatal(err)
	}
	if saved, err := server.LoadSpec(specFile); err != nil || saved.CheckSecret(keys) != nil || len(saved.SecretIDs) != 1 {
		t.Errorf("the spec after certs lists %v, %v; want the secret's id %v", saved.SecretIDs, err, keys.IDs())
	}
	// Without TLS files, the secret alone does not do.
	code, _, errs = shoal("server", "--id", "n1", "--data", filepath.Join(dir, "n1"), "--cluster", specFile,
		"--tls-dir", filepath.Join(dir, "none"))
	if code != 1 || !strings.Contains(errs, "no credentials") || !strings.Contains(errs, "--insecure") {
		t.Errorf("server without certificates: exit %d, %q", code, errs)
	}
	caBefore, _ := os.ReadFile(filepath.Join(tlsDir, "ca.crt"))
	if err := os.Remove(filepath.Join(tlsDir, "n2.crt")); err != nil {
		t.Fatal(err)
	}
	if code, out, errs := shoal("certs", "--cluster", specFile, "--out", tlsDir); code != 0 || !strings.Contains(out, "n2.crt") || strings.Contains(out, "n1.crt") {
		t.Errorf("certs again: exit %d, %q %q; want only n2's files written", code, out, errs)
	}
	if caAfter, _ := os.ReadFile(filepath.Join(tlsDir, "ca.crt")); !bytes.Equal(caBefore, caAfter) {
		t.Error("certs replaced the existing CA")
	}
	for _, id := range []string{"n1", "n2"} {
		if _, err := server.LoadPeerTLS(tlsDir, id); err != nil {
			t.Errorf("credentials of %s: %v", id, err)
		}
	}
	// n1's certificate, under n2's name, is refused at once.
	n1crt, _ := os.ReadFile(filepath.Join(tlsDir, "n1.crt"))
	n1key, _ := os.ReadFile(filepath.Join(tlsDir, "n1.key"))
	_ = os.WriteFile(filepath.Join(tlsDir, "n2.crt"), n1crt, 0o644)
	_ = os.WriteFile(filepath.Join(tlsDir, "n2.key"), n1key, 0o600)
	if _, err := server.LoadPeerTLS(tlsDir, "n2"); !errors.Is(err, server.ErrNoCredentials) || !strings.Contains(err.Error(), "names node") {
		t.Errorf("n1's certificate as n2's: %v", err)
	}
}

// shoal certs --id issues, with the CA in --out, the credentials of a node
// that joins later; it refuses without a CA, never replaces a node's
// files, and refuses an id that cannot name one.
func TestCertsForJoiningNode(t *testing.T) {
	dir := t.TempDir()
	tlsDir := filepath.Join(dir, "tls")
	code, _, errs := shoal("certs", "--out", tlsDir, "--id", "n7")
	if code != 1 || !strings.Contains(errs, "no CA") || !strings.Contains(errs, "--cluster") {
		t.Errorf("certs --id without a CA: exit %d, %q; want it refused, naming --cluster", code, errs)
	}
	if _, err := os.Stat(filepath.Join(tlsDir, "n7.crt")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("certs --id without a CA wrote n7.crt: %v", err)
	}
	specFile := savePairSpec(t, dir)
	if code, _, errs := shoal("certs", "--cluster", specFile); code != 0 {
		t.Fatalf("certs --cluster: exit %d, %s", code, errs)
	}
	code, out, errs := shoal("certs", "--out", tlsDir, "--id", "n7,n8")
	if code != 0 {
		t.Fatalf("certs --id n7,n8: exit %d, %s", code, errs)
	}
	for _, id := range []string{"n7", "n8"} {
		if !strings.Contains(out, filepath.Join(tlsDir, id+".key")) || !strings.Contains(out, "for node "+id+": copy") {
			t.Errorf("certs --id output lacks %s's files or what to copy:\n%s", id, out)
		}
		if _, err := server.LoadPeerTLS(tlsDir, id); err != nil {
			t.Errorf("credentials of %s: %v", id, err)
		}
	}
	if fi, err := os.Stat(filepath.Join(tlsDir, "n7.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("n7.key: %v, %v; want mode 0600", fi, err)
	}
	n1Before, _ := os.ReadFile(filepath.Join(tlsDir, "n1.crt"))
	code, _, errs = shoal("certs", "--out", tlsDir, "--id", "n9,n1")
	if code != 1 || !strings.Contains(errs, "n1.crt") {
		t.Errorf("certs --id for n1, which has a certificate: exit %d, %q; want it refused", code, errs)
	}
	if n1After, _ := os.ReadFile(filepath.Join(tlsDir, "n1.crt")); !bytes.Equal(n1Before, n1After) {
		t.Error("certs --id replaced n1's certificate")
	}
	if _, err := os.Stat(filepath.Join(tlsDir, "n9.crt")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused certs --id wrote n9.crt: %v", err)
	}
	for _, args := range [][]string{
		{"--out", tlsDir, "--id", "../n9"},
		{"--out", tlsDir, "--id", "n9,,n10"},
		{"--out", tlsDir, "--id", "n9,n9"},
		{"--id", "n9"},
		{"--cluster", specFile, "--id", "n9"},
	} {
		if code, _, errs := shoal(append([]string{"certs"}, args...)...); code != 2 {
			t.Errorf("certs %q: exit %d, %q; want a usage error", args, code, errs)
		}
	}
	if matches, _ := filepath.Glob(filepath.Join(dir, "n9*")); len(matches) != 0 {
		t.Errorf("a refused id wrote %v", matches)
	}
}
