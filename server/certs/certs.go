// Package certs makes and loads the credentials of a shoal cluster's
// node-to-node traffic: a cluster certificate authority (CA), and for each
// node a certificate the CA signed that names the node by its id in the
// cluster spec. Nodes authenticate each other with mutual TLS: a node
// accepts a peer only with a certificate from the cluster CA naming a node
// of the cluster, and a node dialing a peer checks that the certificate it
// is shown names the node it meant to reach.
//
// A certificate names node ID in a URI subject alternative name,
// shoal://node/ID (NodeURI); host names and addresses play no part, so
// nodes may move between hosts without new certificates.
//
// In a directory the credentials are PEM files:
//
//	ca.crt        the CA certificate(s) a peer's certificate must chain to
//	ca.key        the CA's private key (only where certificates are made)
//	ID.crt ID.key node ID's certificate and private key
//
// Keys are ECDSA P-256 and written with mode 0600. Ensure makes what a
// cluster's nodes lack (a CA too, if the directory has none); IssueFiles
// issues, with the directory's CA only, for nodes that join later, and
// never replaces a node's files.
package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Validity periods of what Issue and NewCA make. A certificate is valid
// from an hour before it was made, so that peers whose clocks trail a
// little accept it at once.
const (
	CAValidity   = 10 * 365 * 24 * time.Hour
	NodeValidity = 2 * 365 * 24 * time.Hour
	clockSkew    = time.Hour
)

// File names in a credentials directory.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// NodeFiles returns the paths of node id's certificate and key in dir.
func NodeFiles(dir, id string) (certFile, keyFile string) {
	return filepath.Join(dir, id+".crt"), filepath.Join(dir, id+".key")
}

// Errors, testable with errors.Is.
var (
	// ErrNoNodeName: a certificate names no node (it has no shoal://node/
	// URI), or names more than one.
	ErrNoNodeName = errors.New("certs: certificate names no node")
	// ErrInvalid: credentials that do not fit together: a node certificate
	// the CA did not sign, one naming another node, a key that does not
	// match its certificate, a file that is not PEM of the expected kind.
	ErrInvalid = errors.New("certs: invalid credentials")
	// ErrNoCA: a directory holds no CA (ca.crt and ca.key) to issue
	// certificates with.
	ErrNoCA = errors.New("certs: no CA")
	// ErrExists: a node has a certificate or key already where one would
	// be written.
	ErrExists = errors.New("certs: credentials exist")
)

// uriScheme and uriHost make the URI that names a node: shoal://node/ID.
const (
	uriScheme = "shoal"
	uriHost   = "node"
)

// NodeURI returns the URI by which a certificate names node id.
func NodeURI(id string) *url.URL {
	return &url.URL{Scheme: uriScheme, Host: uriHost, Path: "/" + id}
}

// NodeID returns the id of the node that cert names (see NodeURI), or an
// error wrapping ErrNoNodeName.
func NodeID(cert *x509.Certificate) (string, error) {
	var ids []string
	for _, u := range cert.URIs {
		if u.Scheme == uriScheme && u.Host == uriHost && len(u.Path) > 1 {
			ids = append(ids, strings.TrimPrefix(u.Path, "/"))
		}
	}
	if len(ids) != 1 {
		return "", fmt.Errorf("%w: %d node names in %q", ErrNoNodeName, len(ids), cert.Subject.CommonName)
	}
	return ids[0], nil
}

// CA is a cluster certificate authority: its certificate and private key.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// NewCA makes a CA named name, valid for CAValidity.
func NewCA(name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("certs: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	cert, err := sign(tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key}, nil
}

// Issue makes a private key and a certificate for node id, signed by ca,
// valid for NodeValidity, for both ends of a TLS connection.
func (ca *CA) Issue(id string) (tls.Certificate, error) {
	if id == "" {
		return tls.Certificate{}, fmt.Errorf("%w: empty node id", ErrInvalid)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certs: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "shoal node " + id},
		NotBefore:   now.Add(-clockSkew),
		NotAfter:    now.Add(NodeValidity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{NodeURI(id)},
	}
	cert, err := sign(tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}, nil
}

// Pool returns a pool holding the CA's certificate.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

func sign(tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("certs: %w", err)
	}
	tmpl.SerialNumber = serial
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		return nil, fmt.Errorf("certs: %w", err)
	}
	return x509.ParseCertificate(der)
}

// Verify checks that cert chains to roots, is valid now for both ends of a
// TLS connection, and names node id.
func Verify(cert *x509.Certificate, roots *x509.CertPool, id string) error {
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}); err != nil {
		return fmt.Errorf("%w: the certificate of node %s: %v", ErrInvalid, id, err)
	}
	named, err := NodeID(cert)
	if err != nil {
		return err
	}
	if named != id {
		return fmt.Errorf("%w: the certificate of node %s names node %q", ErrInvalid, id, named)
	}
	return nil
}

// Load reads the CA certificates of dir and node id's certificate and key,
// and checks that the certificate is valid and names id (Verify). The CA
// file may hold several certificates: while a cluster moves to a new CA,
// its nodes trust both.
func Load(dir, id string) (*x509.CertPool, tls.Certificate, error) {
	roots, _, err := readCerts(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	certFile, keyFile := NodeFiles(dir, id)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("certs: node %s: %w", id, err)
	}
	if err := Verify(cert.Leaf, roots, id); err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("%s: %w", certFile, err)
	}
	return roots, cert, nil
}

// readCerts reads every certificate of a PEM file into a pool.
func readCerts(path string) (*x509.CertPool, []*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("certs: %w", err)
	}
	pool := x509.NewCertPool()
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %s: %v", ErrInvalid, path, err)
		}
		pool.AddCert(c)
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, nil, fmt.Errorf("%w: %s holds no certificate", ErrInvalid, path)
	}
	return pool, certs, nil
}

// LoadCA reads the CA of dir: the certificate in ca.crt that matches the
// key in ca.key.
func LoadCA(dir string) (*CA, error) {
	_, certs, err := readCerts(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, fmt.Errorf("certs: %w", err)
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return nil, fmt.Errorf("%w: %s holds no PEM key", ErrInvalid, CAKeyFile)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrInvalid, CAKeyFile, err)
	}
	key, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%w: %s: a %T cannot sign", ErrInvalid, CAKeyFile, k)
	}
	type publicKey interface{ Equal(crypto.PublicKey) bool }
	for _, c := range certs {
		if pub, ok := key.Public().(publicKey); ok && pub.Equal(c.PublicKey) && c.IsCA {
			return &CA{Cert: c, Key: key}, nil
		}
	}
	return nil, fmt.Errorf("%w: no CA certificate in %s matches %s", ErrInvalid, CACertFile, CAKeyFile)
}

// Save writes the CA to dir, which it makes if need be, as CACertFile and
// CAKeyFile (the key with mode 0600), replacing what is there.
func (ca *CA) Save(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	return writeKeyPair(filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile), ca.Cert, ca.Key)
}

// IssueFiles issues with the CA of dir (LoadCA) a certificate and key for
// each of ids, written to dir (NodeFiles), and returns the files it wrote:
// credentials for nodes that join a running cluster. It writes nothing if
// dir holds no CA (ErrNoCA) or any of ids has a certificate or key there
// (ErrExists): a node may be using them. The caller checks the ids (as
// server.CheckNodeID does): each names files in dir.
func IssueFiles(dir string, ids []string) ([]string, error) {
	ca, err := LoadCA(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w in %s: it needs %s and %s", ErrNoCA, dir, CACertFile, CAKeyFile)
	}
	if err != nil {
		return nil, err
	}
	for _, id := range ids {
		if id == "" || filepath.Base(id) != id || strings.EqualFold(id, "ca") {
			return nil, fmt.Errorf("%w: node id %q does not name a node's own files in %s", ErrInvalid, id, dir)
		}
		certFile, keyFile := NodeFiles(dir, id)
		for _, f := range []string{certFile, keyFile} {
			if exists(f) {
				return nil, fmt.Errorf("%w: %s (remove %s and %s to issue node %s new ones)", ErrExists, f, certFile, keyFile, id)
			}
		}
	}
	var wrote []string
	for _, id := range ids {
		files, err := ca.issueFiles(dir, id)
		wrote = append(wrote, files...)
		if err != nil {
			return wrote, err
		}
	}
	return wrote, nil
}

// issueFiles issues a certificate and key for node id and writes them to
// dir, returning the files.
func (ca *CA) issueFiles(dir, id string) ([]string, error) {
	cert, err := ca.Issue(id)
	if err != nil {
		return nil, err
	}
	certFile, keyFile := NodeFiles(dir, id)
	if err := writeKeyPair(certFile, keyFile, cert.Leaf, cert.PrivateKey); err != nil {
		return nil, err
	}
	return []string{certFile, keyFile}, nil
}

// Ensure makes in dir what the nodes ids need and is missing: a CA named
// name, unless dir holds one (ca.crt and ca.key), and for each id without
// one, a certificate and key signed by it. It returns the files it wrote.
// A node whose files exist keeps them, even if another CA signed them:
// Load tells.
func Ensure(dir, name string, ids []string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("certs: %w", err)
	}
	var wrote []string
	ca, err := LoadCA(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if exists(filepath.Join(dir, CACertFile)) || exists(filepath.Join(dir, CAKeyFile)) {
			return nil, fmt.Errorf("%w: %s has only one of %s and %s", ErrInvalid, dir, CACertFile, CAKeyFile)
		}
		if ca, err = NewCA(name); err != nil {
			return nil, err
		}
		if err := ca.Save(dir); err != nil {
			return nil, err
		}
		wrote = append(wrote, filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile))
	case err != nil:
		return nil, err
	}
	for _, id := range ids {
		certFile, keyFile := NodeFiles(dir, id)
		if exists(certFile) && exists(keyFile) {
			continue
		}
		files, err := ca.issueFiles(dir, id)
		wrote = append(wrote, files...)
		if err != nil {
			return wrote, err
		}
	}
	return wrote, nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// writeKeyPair writes a certificate (mode 0644) and its key (mode 0600),
// the key first, each atomically.
func writeKeyPair(certFile, keyFile string, cert *x509.Certificate, key crypto.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	if err := writeFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return err
	}
	return writeFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644)
}

func writeFile(path string, b []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	// WriteFile keeps the mode of a file that was there already.
	if err := os.Chmod(tmp, mode); err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	return nil
}
