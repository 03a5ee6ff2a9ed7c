package wire

import (
	"bufio"
	"bytes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// Sealing. Every datagram between clients and nodes is sealed with
// XChaCha20-Poly1305 under a key derived from a cluster secret. A sealed
// datagram is
//
//	version (1) | key id (4) | sent, Unix milliseconds (8) | nonce (24) | ciphertext | tag (16)
//
// where the header is authenticated as additional data and the ciphertext is
// the Bencode message. Queries and replies are sealed under different keys,
// so that a node's reply cannot be passed off as a query to another node,
// and a query's additional data also holds the address it was sent to, so
// that a node takes only queries meant for it (SetAddrs). A receiver drops,
// without a word, a datagram that does not open, whose sending time is more
// than ReplayWindow from its own clock, that it took before, or, at a node,
// that was sent before the node started: an unauthenticated sender never
// draws a reply, and a captured query draws at most the one reply it drew
// already, so a node cannot be used to reflect traffic at a forged source
// address.
const (
	sealVersion = 1
	sealHeader  = 1 + 4 + 8 + chacha20poly1305.NonceSizeX
	// SealOverhead is how many bytes sealing adds to a message.
	SealOverhead = sealHeader + chacha20poly1305.Overhead
	// ReplayWindow is how far a sealed datagram's sending time may be from
	// the receiver's clock. A datagram captured and sent again later is
	// refused; within the window the receiver remembers the nonces it took
	// and refuses a datagram it has seen. Clocks of clients and nodes must
	// agree within it (NTP).
	ReplayWindow = 10 * time.Second
	// ReplayMemory bounds the nonces a receiver remembers of the datagrams
	// sent in any one second; it remembers 22 such seconds (the window
	// either side), about 2.2 MiB each when full, so at most about 50 MiB.
	// Past it, datagrams sent in that second are refused, since a replay
	// of them could not be told: a node takes at most ReplayMemory client
	// datagrams a second.
	ReplayMemory = 1 << 16
	// MinSecretSize is the least number of bytes a cluster secret has.
	MinSecretSize = 32
)

// errNotForUs: a node with no address takes no query.
var errNotForUs = errors.New("wire: no address to take queries at")

// ErrAuth is wrapped by errors about cluster secrets: one missing,
// malformed or not the cluster's. Its text says "authentication failed".
var ErrAuth = errors.New("authentication failed")

// Keyring holds the secrets a cluster accepts. The first seals what is
// sent; every one of them opens what arrives, so that a secret can be
// rotated without downtime: add the new one second everywhere, then move it
// first everywhere, then drop the old one. A Keyring is immutable and safe
// for concurrent use.
type Keyring struct {
	keys []sealKey
}

// sealKey is the pair of keys derived from one secret.
type sealKey struct {
	id       [4]byte
	toNode   cipher.AEAD // seals queries
	toClient cipher.AEAD // seals replies and heartbeats
}

// NewKeyring derives the keys of each secret, at least MinSecretSize bytes
// of it random. The first secret seals.
func NewKeyring(secrets ...[]byte) (*Keyring, error) {
	if len(secrets) == 0 {
		return nil, fmt.Errorf("%w: no secret", ErrAuth)
	}
	k := &Keyring{}
	for i, s := range secrets {
		if len(s) < MinSecretSize {
			return nil, fmt.Errorf("%w: secret %d has %d bytes, want at least %d", ErrAuth, i+1, len(s), MinSecretSize)
		}
		var sk sealKey
		id, err := hkdf.Key(sha256.New, s, nil, "shoal datagram key id v1", len(sk.id))
		if err != nil {
			return nil, err
		}
		copy(sk.id[:], id)
		for _, d := range []struct {
			aead *cipher.AEAD
			info string
		}{{&sk.toNode, "shoal datagrams to nodes v1"}, {&sk.toClient, "shoal datagrams to clients v1"}} {
			key, err := hkdf.Key(sha256.New, s, nil, d.info, chacha20poly1305.KeySize)
			if err != nil {
				return nil, err
			}
			if *d.aead, err = chacha20poly1305.NewX(key); err != nil {
				return nil, err
			}
		}
		k.keys = append(k.keys, sk)
	}
	return k, nil
}

// ParseKeyring reads the text of a secret file: one secret per line in
// hex, the sealing one first; blank lines and lines starting with # are
// skipped.
func ParseKeyring(text []byte) (*Keyring, error) {
	var secrets [][]byte
	sc := bufio.NewScanner(bytes.NewReader(text))
	for line := 1; sc.Scan(); line++ {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		s, err := hex.DecodeString(l)
		if err != nil {
			return nil, fmt.Errorf("%w: line %d is not a hex secret", ErrAuth, line)
		}
		secrets = append(secrets, s)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrAuth, err)
	}
	return NewKeyring(secrets...)
}

// LoadKeyring reads a secret file (see ParseKeyring).
func LoadKeyring(path string) (*Keyring, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: no secret: %w", ErrAuth, err)
	}
	k, err := ParseKeyring(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// NewSecret returns the text of a new secret file: MinSecretSize random
// bytes in hex, and a newline.
func NewSecret() []byte {
	b := make([]byte, MinSecretSize)
	rand.Read(b) // never fails (crypto/rand, Go 1.24+)
	return []byte(hex.EncodeToString(b) + "\n")
}

// IDs returns the key ids of the secrets, in hex, the sealing one first.
// A key id says which secret sealed a datagram without saying anything of
// the secret; spec files list the ids a cluster accepts, so that a client
// holding another secret can be told at once.
func (k *Keyring) IDs() []string {
	ids := make([]string, len(k.keys))
	for i := range k.keys {
		ids[i] = hex.EncodeToString(k.keys[i].id[:])
	}
	return ids
}

// Side says which end of the traffic a SealedTransport is at.
type Side uint8

const (
	// ClientSide seals queries and opens replies and heartbeats.
	ClientSide Side = iota
	// NodeSide seals replies and heartbeats and opens queries.
	NodeSide
)

// SealedTransport seals what it sends and opens what it receives over
// another Transport, dropping whatever does not open.
type SealedTransport struct {
	inner Transport
	keys  *Keyring
	side  Side
	now   func() time.Time
	raw   sync.Pool // *[]byte, MaxDatagramSize+1

	// addrs are where a node's queries are sent to (NodeSide); since is
	// when the node started taking them.
	addrs []netip.AddrPort
	since time.Time

	mu   sync.Mutex
	seen replayFilter

	rejected atomic.Uint64
}

var _ Transport = (*SealedTransport)(nil)

// Seal wraps t so that every datagram is sealed under keys; side says
// which keys seal and which open. The SealedTransport owns t.
//
// A node's side takes only queries sent to its addresses: t's local
// address, unless SetAddrs says otherwise.
func Seal(t Transport, keys *Keyring, side Side) *SealedTransport {
	s := &SealedTransport{inner: t, keys: keys, side: side, now: time.Now, since: time.Now()}
	s.raw.New = func() any { b := make([]byte, MaxDatagramSize+1); return &b }
	if a := t.LocalAddr(); side == NodeSide && a.IsValid() && !a.Addr().IsUnspecified() {
		s.addrs = []netip.AddrPort{a}
	}
	return s
}

// SetAddrs sets the addresses a node's clients send to, those of the
// spec: a query sealed for any other address, one meant for another node,
// is dropped. It must be called before s is used.
func (s *SealedTransport) SetAddrs(addrs ...netip.AddrPort) { s.addrs = addrs }

// destLen is the size of a destination address in a query's additional
// data: the IP in 16 bytes (IPv4 mapped) and the port.
const destLen = 18

// additionalData returns the header of sealed datagram d and, for a query,
// the address it is sent to, as the AEAD's additional data.
func additionalData(ad *[sealHeader + destLen]byte, header []byte, query bool, to netip.AddrPort) []byte {
	n := copy(ad[:], header)
	if !query {
		return ad[:n]
	}
	ip := to.Addr().Unmap().As16()
	n += copy(ad[n:], ip[:])
	binary.BigEndian.PutUint16(ad[n:], to.Port())
	return ad[:n+2]
}

// SetClock makes s read the time from now instead of time.Now, to stamp
// what it sends and to judge what arrives: for simulations, and for tests
// that replay old traffic. It must be called before s is used.
func (s *SealedTransport) SetClock(now func() time.Time) { s.now, s.since = now, now() }

// Rejected counts the datagrams dropped because they did not open: not
// sealed, sealed under an unknown secret, forged, or sent outside the
// replay window.
func (s *SealedTransport) Rejected() uint64 { return s.rejected.Load() }

// LocalAddr is the inner transport's address.
func (s *SealedTransport) LocalAddr() netip.AddrPort { return s.inner.LocalAddr() }

// Close closes the inner transport.
func (s *SealedTransport) Close() error { return s.inner.Close() }

// sealing returns the AEAD that seals what this side sends, and opening
// the one of key k that opens what it receives.
func (s *SealedTransport) sealing() (id [4]byte, aead cipher.AEAD) {
	k := &s.keys.keys[0]
	if s.side == ClientSide {
		return k.id, k.toNode
	}
	return k.id, k.toClient
}

func (s *SealedTransport) opening(id []byte) cipher.AEAD {
	for i := range s.keys.keys {
		k := &s.keys.keys[i]
		if bytes.Equal(k.id[:], id) {
			if s.side == ClientSide {
				return k.toClient
			}
			return k.toNode
		}
	}
	return nil
}

// Send seals b and sends it.
func (s *SealedTransport) Send(b []byte, addr netip.AddrPort) error {
	if len(b)+SealOverhead > MaxDatagramSize {
		return fmt.Errorf("%w: message of %d bytes exceeds %d", ErrTooLarge, len(b), MaxMessageSize)
	}
	bp := s.raw.Get().(*[]byte)
	defer s.raw.Put(bp)
	out := (*bp)[:sealHeader]
	id, aead := s.sealing()
	out[0] = sealVersion
	copy(out[1:5], id[:])
	binary.BigEndian.PutUint64(out[5:13], uint64(s.now().UnixMilli()))
	rand.Read(out[13:sealHeader])
	var ad [sealHeader + destLen]byte
	out = aead.Seal(out, out[13:sealHeader], b, additionalData(&ad, out[:sealHeader], s.side == ClientSide, addr))
	return s.inner.Send(out, addr)
}

// Receive returns the next datagram that opens, dropping the others.
func (s *SealedTransport) Receive(buf []byte) (int, netip.AddrPort, time.Time, error) {
	bp := s.raw.Get().(*[]byte)
	defer s.raw.Put(bp)
	raw := *bp
	for {
		n, from, arrived, err := s.inner.Receive(raw)
		if err != nil {
			return 0, from, arrived, err
		}
		if m, ok := s.open(buf, raw[:n]); ok {
			return m, from, arrived, nil
		}
		s.rejected.Add(1)
	}
}

// open opens datagram d into buf, and says whether it was sealed under a
// known secret by this side's peer within the replay window.
func (s *SealedTransport) open(buf, d []byte) (int, bool) {
	if len(d) < SealOverhead || len(d) > MaxDatagramSize || d[0] != sealVersion {
		return 0, false
	}
	aead := s.opening(d[1:5])
	if aead == nil {
		return 0, false
	}
	sent := time.UnixMilli(int64(binary.BigEndian.Uint64(d[5:13])))
	if skew := s.now().Sub(sent); skew > ReplayWindow || skew < -ReplayWindow {
		return 0, false
	}
	// A node that restarted has forgotten the nonces it took: it takes
	// nothing sent before it started, which may be a copy of one taken.
	if s.side == NodeSide && sent.Before(s.since.Truncate(time.Millisecond)) {
		return 0, false
	}
	if len(buf) < len(d)-SealOverhead {
		return 0, false // a receiver's buffer holds any message; this one cannot be whole
	}
	var ad [sealHeader + destLen]byte
	var m []byte
	var err error
	if s.side == ClientSide {
		m, err = aead.Open(buf[:0], d[13:sealHeader], d[sealHeader:], additionalData(&ad, d[:sealHeader], false, netip.AddrPort{}))
	} else {
		err = errNotForUs
		for _, to := range s.addrs {
			if m, err = aead.Open(buf[:0], d[13:sealHeader], d[sealHeader:], additionalData(&ad, d[:sealHeader], true, to)); err == nil {
				break
			}
		}
	}
	if err != nil {
		return 0, false
	}
	s.mu.Lock()
	fresh := s.seen.add(d[13:sealHeader], sent, s.now())
	s.mu.Unlock()
	return len(m), fresh
}

// replayFilter remembers the nonces of the datagrams taken, by the second
// they were sent in, for as long as a datagram sent then is within the
// replay window: so a replayed datagram is refused for as long as its
// sending time would let it in.
type replayFilter struct {
	bySecond map[int64]map[uint64]struct{}
	swept    int64 // the second of the last sweep
}

// add records the nonce (its first 8 bytes, random) of a datagram sent at
// sent, and reports whether it is fresh: not seen before, and with room to
// remember it.
func (f *replayFilter) add(nonce []byte, sent, now time.Time) bool {
	if f.bySecond == nil {
		f.bySecond = make(map[int64]map[uint64]struct{})
	}
	// A datagram sent in second s is taken until ReplayWindow past its
	// end at the latest.
	if sec := now.Unix(); sec != f.swept {
		f.swept = sec
		for s := range f.bySecond {
			if s+1+int64(ReplayWindow/time.Second) < sec {
				delete(f.bySecond, s)
			}
		}
	}
	seen := f.bySecond[sent.Unix()]
	if seen == nil {
		seen = make(map[uint64]struct{})
		f.bySecond[sent.Unix()] = seen
	}
	k := binary.LittleEndian.Uint64(nonce)
	if _, ok := seen[k]; ok || len(seen) >= ReplayMemory {
		return false
	}
	seen[k] = struct{}{}
	return true
}
