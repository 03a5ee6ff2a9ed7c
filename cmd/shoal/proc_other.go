//go:build !linux

package main

import "time"

// nodesCPU reports 0: only Linux's /proc gives another process's CPU time
// here.
func nodesCPU(pids []int) time.Duration { return 0 }

// processRSS reports 0: only Linux's /proc gives another process's
// resident memory here.
func processRSS(pid int) float64 { return 0 }
