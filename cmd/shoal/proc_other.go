//go:build !linux

package main

import "time"

// processCPU reports 0: only Linux's /proc gives another process's CPU
// time here.
func processCPU(pid int) time.Duration { return 0 }

// processRSS reports 0: only Linux's /proc gives another process's
// resident memory here.
func processRSS(pid int) float64 { return 0 }
