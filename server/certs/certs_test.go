package certs

import (
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// A node certificate names its node and chains to its CA only; Load checks
// both, and trusts every CA of a bundle, as a cluster moving to a new CA
// does.
func TestIssueVerifyLoad(t *testing.T) {
	ca, err := NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	other, err := NewCA("other")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Issue("node/1")
	if err != nil {
		t.Fatal(err)
	}
	if id, err := NodeID(cert.Leaf); err != nil || id != "node/1" {
		t.Errorf("NodeID = %q, %v", id, err)
	}
	if err := Verify(cert.Leaf, ca.Pool(), "node/1"); err != nil {
		t.Errorf("Verify: %v", err)
	}
	if err := Verify(cert.Leaf, ca.Pool(), "n2"); !errors.Is(err, ErrInvalid) {
		t.Errorf("Verify as another node: %v", err)
	}
	if err := Verify(cert.Leaf, other.Pool(), "node/1"); !errors.Is(err, ErrInvalid) {
		t.Errorf("Verify against another CA: %v", err)
	}
	if _, err := NodeID(ca.Cert); !errors.Is(err, ErrNoNodeName) {
		t.Errorf("NodeID of a CA: %v", err)
	}

	dir := t.TempDir()
	if err := other.Save(dir); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := NodeFiles(dir, "n1")
	n1, err := ca.Issue("n1")
	if err != nil {
		t.Fatal(err)
	}
	if err := writeKeyPair(certFile, keyFile, n1.Leaf, n1.PrivateKey); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Load(dir, "n1"); !errors.Is(err, ErrInvalid) {
		t.Errorf("Load of a certificate from a CA not trusted: %v", err)
	}
	// Both CAs in ca.crt: the new one is trusted too, and LoadCA finds the
	// one matching ca.key.
	a, _ := os.ReadFile(filepath.Join(dir, CACertFile))
	b := append(a, pemCert(ca)...)
	if err := os.WriteFile(filepath.Join(dir, CACertFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Load(dir, "n1"); err != nil {
		t.Errorf("Load with a bundle of CAs: %v", err)
	}
	got, err := LoadCA(dir)
	if err != nil || !got.Cert.Equal(other.Cert) {
		t.Errorf("LoadCA: %v", err)
	}
	// Ensure keeps the CA and n1's files, and makes n2's.
	wrote, err := Ensure(dir, "test", []string{"n1", "n2"})
	if err != nil || len(wrote) != 2 {
		t.Fatalf("Ensure wrote %v, %v; want n2's two files", wrote, err)
	}
	if _, _, err := Load(dir, "n2"); err != nil {
		t.Errorf("Load of a node Ensure made: %v", err)
	}
}

func pemCert(ca *CA) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// IssueFiles issues with the CA of a directory only, and never replaces a
// node's credentials: it writes nothing if any id has some.
func TestIssueFiles(t *testing.T) {
	dir := t.TempDir()
	if wrote, err := IssueFiles(dir, []string{"n7"}); !errors.Is(err, ErrNoCA) || len(wrote) != 0 {
		t.Fatalf("IssueFiles without a CA: wrote %v, %v; want ErrNoCA", wrote, err)
	}
	if matches, _ := filepath.Glob(filepath.Join(dir, "*")); len(matches) != 0 {
		t.Fatalf("IssueFiles without a CA left %v", matches)
	}
	ca, err := NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Save(dir); err != nil {
		t.Fatal(err)
	}
	wrote, err := IssueFiles(dir, []string{"n7", "n8"})
	if err != nil || len(wrote) != 4 {
		t.Fatalf("IssueFiles wrote %v, %v; want n7's and n8's files", wrote, err)
	}
	for _, id := range []string{"n7", "n8"} {
		if _, _, err := Load(dir, id); err != nil {
			t.Errorf("Load of %s: %v", id, err)
		}
	}
	before, _ := os.ReadFile(filepath.Join(dir, "n7.crt"))
	for _, id := range []string{"ca", "CA", "../n9", ""} {
		if wrote, err := IssueFiles(dir, []string{id}); !errors.Is(err, ErrInvalid) || len(wrote) != 0 {
			t.Errorf("IssueFiles for %q: wrote %v, %v; want ErrInvalid", id, wrote, err)
		}
	}
	if wrote, err := IssueFiles(dir, []string{"n9", "n7"}); !errors.Is(err, ErrExists) || len(wrote) != 0 {
		t.Errorf("IssueFiles for n9 and n7, which has files: wrote %v, %v; want ErrExists", wrote, err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, "n7.crt")); string(before) != string(after) {
		t.Error("IssueFiles replaced n7's certificate")
	}
	if _, err := os.Stat(filepath.Join(dir, "n9.crt")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("IssueFiles refused but wrote n9's certificate: %v", err)
	}
}
