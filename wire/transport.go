package wire

import (
	"fmt"
	"net"
	"net/netip"
	"time"
)

// Transport sends and receives datagrams, without any guarantee of delivery
// or order. It is the seam between shoal and the network: UDP in
// production, a SimNet endpoint in tests and experiments, and either one
// wrapped by WithFaults to inject loss.
//
// Like net.PacketConn, Receive blocks until a datagram arrives or the
// transport is closed; Close is how its owner stops a receiving goroutine.
// Send never blocks for long: a datagram that cannot be sent at once is
// dropped, as the network itself might.
type Transport interface {
	// LocalAddr is the address this transport receives on.
	LocalAddr() netip.AddrPort
	// Send transmits b to addr. It does not retain b.
	Send(b []byte, addr netip.AddrPort) error
	// Receive waits for the next datagram, copies it into buf and returns
	// its length, its sender and when it arrived: the time it began to
	// wait for a reader, so that arrived's distance from now is how long
	// it waited, or the zero Time from a transport that cannot tell. A
	// datagram longer than buf is truncated to len(buf).
	// After Close it returns an error wrapping net.ErrClosed.
	Receive(buf []byte) (n int, from netip.AddrPort, arrived time.Time, err error)
	// Close releases the transport and unblocks Receive.
	Close() error
}

// udpSocketBuffer is the kernel buffer asked for in each direction, so that a
// burst of datagrams is queued rather than dropped by the kernel.
const udpSocketBuffer = 4 << 20

// UDP is a Transport over a UDP socket. Where the system can (Linux), the
// kernel stamps each datagram with the time it arrived, so Receive reports
// how long a datagram waited in the socket's buffer.
type UDP struct {
	conn   *net.UDPConn
	addr   netip.AddrPort
	stamps bool // the kernel stamps arrivals
}

var _ Transport = (*UDP)(nil)

// ListenUDP opens a UDP socket on addr ("host:port"; port 0 picks a free
// one).
func ListenUDP(addr string) (*UDP, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("wire: listen udp %s: %w", addr, err)
	}
	conn, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, fmt.Errorf("wire: %w", err)
	}
	// Best effort: the kernel caps these at its own maximum.
	_ = conn.SetReadBuffer(udpSocketBuffer)
	_ = conn.SetWriteBuffer(udpSocketBuffer)
	local := conn.LocalAddr().(*net.UDPAddr).AddrPort()
	return &UDP{conn: conn, addr: netip.AddrPortFrom(local.Addr().Unmap(), local.Port()), stamps: stampArrivals(conn)}, nil
}

// LocalAddr returns the address the socket is bound to.
func (u *UDP) LocalAddr() netip.AddrPort { return u.addr }

// Send writes one datagram.
func (u *UDP) Send(b []byte, addr netip.AddrPort) error {
	if _, err := u.conn.WriteToUDPAddrPort(b, addr); err != nil {
		return fmt.Errorf("wire: send to %s: %w", addr, err)
	}
	return nil
}

// Receive reads one datagram. Its arrival is the kernel's stamp, a wall
// clock time with no monotonic reading (so a step of the system clock
// skews the wait measured against it), or the time it was read where there
// is no stamp.
func (u *UDP) Receive(buf []byte) (int, netip.AddrPort, time.Time, error) {
	var (
		n, oobn int
		from    netip.AddrPort
		err     error
		oob     [stampSpace]byte
	)
	if u.stamps {
		n, oobn, _, from, err = u.conn.ReadMsgUDPAddrPort(buf, oob[:])
	} else {
		n, from, err = u.conn.ReadFromUDPAddrPort(buf)
	}
	if err != nil {
		return 0, netip.AddrPort{}, time.Time{}, fmt.Errorf("wire: receive: %w", err)
	}
	arrived, ok := arrivalStamp(oob[:oobn])
	if !ok {
		arrived = time.Now()
	}
	return n, netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), arrived, nil
}

// Close closes the socket.
func (u *UDP) Close() error { return u.conn.Close() }

// ParseAddr resolves "host:port" to a netip.AddrPort, looking the host up if
// it is a name.
func ParseAddr(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	ua, err := net.ResolveUDPAddr("udp", s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("wire: address %q: %w", s, err)
	}
	ap := ua.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}
