package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/shoal-kv/shoal/server/certs"
)

// Node-to-node traffic runs over mutual TLS 1.3 with the cluster's CA: a
// node accepts a connection only from a peer whose certificate the CA
// signed and names a node of the spec (package certs), and a node dialing
// a peer accepts only the certificate of the node it meant to reach. Host
// names play no part: the spec maps a node's id to its address, and the
// certificate names the id.

// PeerTLS holds a node's credentials for node-to-node traffic.
type PeerTLS struct {
	// Roots holds the cluster CA certificates a peer's certificate must
	// chain to.
	Roots *x509.CertPool
	// Cert is this node's certificate and private key. It must chain to
	// Roots and name the node (certs.NodeURI).
	Cert tls.Certificate
}

// ErrNoCredentials is returned (wrapped) by Start for a node configured
// without the credentials it needs to authenticate its clients (Secret)
// or its peers (PeerTLS), unless Config.Insecure says to run without.
var ErrNoCredentials = errors.New("server: no credentials")

// LoadPeerTLS reads node id's credentials from dir: the cluster CA
// certificates (ca.crt) and the node's certificate and key (ID.crt,
// ID.key), as `shoal cluster up` and `shoal certs` write them.
func LoadPeerTLS(dir, id string) (*PeerTLS, error) {
	roots, cert, err := certs.Load(dir, id)
	if err != nil {
		return nil, fmt.Errorf("%w for node %s in %s: %w", ErrNoCredentials, id, dir, err)
	}
	return &PeerTLS{Roots: roots, Cert: cert}, nil
}

// check reports whether p's certificate is valid and names node id.
func (p *PeerTLS) check(id string) error {
	leaf := p.Cert.Leaf
	if leaf == nil && len(p.Cert.Certificate) > 0 {
		var err error
		if leaf, err = x509.ParseCertificate(p.Cert.Certificate[0]); err != nil {
			return fmt.Errorf("%w for node %s: %w", ErrNoCredentials, id, err)
		}
	}
	if leaf == nil || p.Roots == nil {
		return fmt.Errorf("%w for node %s: PeerTLS needs Roots and Cert", ErrNoCredentials, id)
	}
	if err := certs.Verify(leaf, p.Roots, id); err != nil {
		return fmt.Errorf("%w for node %s: %w", ErrNoCredentials, id, err)
	}
	return nil
}

// serverTLS returns the configuration that accepts peers: members of the
// cluster, as isMember tells by node id.
func (p *PeerTLS) serverTLS(isMember func(string) bool) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{p.Cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    p.Roots,
		VerifyConnection: func(cs tls.ConnectionState) error {
			id, err := certs.NodeID(cs.PeerCertificates[0])
			if err != nil {
				return err
			}
			if !isMember(id) {
				return fmt.Errorf("server: peer %q is not a node of the cluster", id)
			}
			return nil
		},
	}
}

// clientTLS returns the configuration that dials node want. Go's own
// verification checks a host name, which a node's certificate does not
// carry: it is turned off, and VerifyConnection verifies the chain and the
// node's name instead.
func (p *PeerTLS) clientTLS(want string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		Certificates:       []tls.Certificate{p.Cert},
		InsecureSkipVerify: true, // see VerifyConnection
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return fmt.Errorf("server: node %s showed no certificate", want)
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			leaf := cs.PeerCertificates[0]
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: p.Roots, Intermediates: inter,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
				return fmt.Errorf("server: node %s: %w", want, err)
			}
			got, err := certs.NodeID(leaf)
			if err != nil {
				return err
			}
			if got != want {
				return fmt.Errorf("server: dialed node %s, reached node %q", want, got)
			}
			return nil
		},
	}
}

// dialer opens connections to other nodes' listeners: over TLS as the
// node's credentials say, or plain TCP when the node runs insecure.
type dialer struct {
	creds *PeerTLS // nil: insecure
	// nodeAt returns the id of the member at a raft address: raft dials
	// addresses, and the node at one must prove it is that node.
	nodeAt func(addr string) (string, bool)
}

// dial opens a connection to the node listener at addr and writes
// preamble, within ctx and at most handshakeTimeout.
func (d *dialer) dial(ctx context.Context, addr string, preamble []byte) (net.Conn, error) {
	id, ok := d.nodeAt(addr)
	if !ok {
		return nil, fmt.Errorf("server: %s is no node's raft address", addr)
	}
	ctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	var nd net.Dialer
	conn, err := nd.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	if d.creds != nil {
		tc := tls.Client(conn, d.creds.clientTLS(id))
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, fmt.Errorf("server: TLS with node %s at %s: %w", id, addr, err)
		}
		conn = tc
	}
	deadline, _ := ctx.Deadline()
	_ = conn.SetWriteDeadline(deadline)
	if _, err := conn.Write(preamble); err != nil {
		conn.Close()
		return nil, err
	}
	_ = conn.SetWriteDeadline(time.Time{})
	return conn, nil
}
