package sim

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// diskOf names the block device, as /proc/diskstats does, that holds dir;
// false for a file system without one (tmpfs).
func diskOf(dir string) (string, bool) {
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return "", false
	}
	dev := uint64(st.Dev)
	major := (dev>>8)&0xfff | (dev>>32)&^0xfff
	minor := dev&0xff | (dev>>12)&^0xff
	name := ""
	scanDiskstats(func(f []string) {
		if f[0] == strconv.FormatUint(major, 10) && f[1] == strconv.FormatUint(minor, 10) {
			name = f[2]
		}
	})
	return name, name != ""
}

// diskFlushes is the flush requests the device has completed: the disk
// cache flushes fsync costs (kernel 5.5 and later).
func diskFlushes(name string) (uint64, error) {
	var n uint64
	var err error
	found := false
	scanDiskstats(func(f []string) {
		if f[2] == name && len(f) >= 19 {
			found = true
			n, err = strconv.ParseUint(f[18], 10, 64)
		}
	})
	if !found {
		return 0, fmt.Errorf("sim: no flush count for %s in /proc/diskstats", name)
	}
	return n, err
}

func scanDiskstats(fn func(fields []string)) {
	f, err := os.Open("/proc/diskstats")
	if err != nil {
		return
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if fields := strings.Fields(s.Text()); len(fields) >= 3 {
			fn(fields)
		}
	}
}
