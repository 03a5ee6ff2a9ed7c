package wire

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
)

// A client's identity is a random proof it keeps to itself and the client
// id derived from it, which nodes, logs and the raft log may show: the id
// names the client's session, and only the proof's holder can act under
// it. The id is short because it is in every command of the raft log.
const (
	// ProofSize is the length of a proof in bytes (hex in Message.Proof).
	ProofSize = 16
	// ClientIDSize is the length of a client id in bytes (hex in
	// Message.Client).
	ClientIDSize = 8
)

// ErrUnprovenClient: a query names a client id that its proof does not
// derive: another client's session.
var ErrUnprovenClient = errors.New("client id not proven")

// ClientIdentity is a client id and the proof of it.
type ClientIdentity struct {
	ID, Proof string
}

// NewClientIdentity draws a proof from the system's secure source.
func NewClientIdentity() ClientIdentity {
	b := make([]byte, ProofSize)
	rand.Read(b) // never fails (crypto/rand, Go 1.24+)
	proof := hex.EncodeToString(b)
	return ClientIdentity{ID: ClientIDOf(proof), Proof: proof}
}

// ClientIDOf derives the client id a proof stands for.
func ClientIDOf(proof string) string {
	sum := sha256.Sum256([]byte(proof))
	return hex.EncodeToString(sum[:ClientIDSize])
}

// CheckProof checks that m's client id, if it names one, is proven by
// m.Proof (ErrUnprovenClient). A node checks it for every query that
// arrives from a client; the queries that nodes forward to each other
// carry ids already checked, without proofs.
func CheckProof(m *Message) error {
	if m.Client == "" {
		return nil
	}
	if len(m.Proof) != 2*ProofSize || len(m.Client) != 2*ClientIDSize || ClientIDOf(m.Proof) != m.Client {
		return fmt.Errorf("%w: query as client %.32q", ErrUnprovenClient, m.Client)
	}
	return nil
}
