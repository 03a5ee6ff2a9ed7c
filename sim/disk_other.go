//go:build !linux

package sim

import "errors"

// diskOf reports false: only Linux's /proc/diskstats counts flushes.
func diskOf(string) (string, bool) { return "", false }

func diskFlushes(string) (uint64, error) {
	return 0, errors.New("sim: disk flushes are counted only on Linux")
}
