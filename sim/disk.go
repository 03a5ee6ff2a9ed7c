package sim

import (
	"os"
	"sync"
	"time"
)

// flushCapacity measures how many flushes a second the disk holding dir
// completes when parallel writers each append 4 KiB and fsync in a loop,
// as parallel raft logs do: the disk's capacity in the unit raft spends.
func flushCapacity(dir, disk string, parallel int, d time.Duration) (float64, error) {
	before, err := diskFlushes(disk)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	errs := make(chan error, parallel)
	var wg sync.WaitGroup
	for i := 0; i < parallel; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, err := os.CreateTemp(dir, "flush-")
			if err != nil {
				errs <- err
				return
			}
			defer os.Remove(f.Name())
			defer f.Close()
			block := make([]byte, 4096)
			for time.Since(start) < d {
				if _, err := f.Write(block); err != nil {
					errs <- err
					return
				}
				if err := f.Sync(); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	after, err := diskFlushes(disk)
	if err != nil {
		return 0, err
	}
	return float64(after-before) / time.Since(start).Seconds(), nil
}
