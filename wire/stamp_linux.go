package wire

import (
	"encoding/binary"
	"net"
	"syscall"
	"time"
)

// stampSpace is room for the control message holding a datagram's arrival
// stamp, a timespec: syscall.CmsgSpace(16) is 32 on 64-bit systems.
const stampSpace = 64

// stampArrivals asks the kernel to stamp every datagram conn receives with
// the time it arrived (SO_TIMESTAMPNS). It reports whether it will.
func stampArrivals(conn *net.UDPConn) bool {
	raw, err := conn.SyscallConn()
	if err != nil {
		return false
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_TIMESTAMPNS, 1)
	}); err != nil {
		return false
	}
	return serr == nil
}

// arrivalStamp finds the kernel's arrival stamp among a datagram's control
// messages.
func arrivalStamp(oob []byte) (time.Time, bool) {
	if len(oob) == 0 {
		return time.Time{}, false
	}
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return time.Time{}, false
	}
	for _, m := range msgs {
		if m.Header.Level != syscall.SOL_SOCKET || m.Header.Type != syscall.SCM_TIMESTAMPNS {
			continue
		}
		// A struct timespec: two longs, 8 bytes each on 64-bit systems
		// and 4 on 32-bit ones.
		switch len(m.Data) {
		case 16:
			return time.Unix(int64(binary.NativeEndian.Uint64(m.Data)), int64(binary.NativeEndian.Uint64(m.Data[8:]))), true
		case 8:
			return time.Unix(int64(int32(binary.NativeEndian.Uint32(m.Data))), int64(int32(binary.NativeEndian.Uint32(m.Data[4:])))), true
		}
	}
	return time.Time{}, false
}
