//go:build !linux

package wire

import (
	"net"
	"time"
)

// stampSpace is zero: without kernel stamps there are no control messages
// to read.
const stampSpace = 0

// stampArrivals reports that the kernel will not stamp arrivals here;
// Receive takes the time a datagram is read as its arrival.
func stampArrivals(*net.UDPConn) bool { return false }

func arrivalStamp([]byte) (time.Time, bool) { return time.Time{}, false }
