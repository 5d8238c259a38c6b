package sched

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

func batch() error {
	done := map[int]bool{}
	// A thread started while the list is read was cloned from one that
	// may not have been changed yet: read the list again until it holds
	// nothing new.
	for range 5 {
		tids, err := threads()
		if err != nil {
			return err
		}
		fresh := false
		for _, tid := range tids {
			if done[tid] {
				continue
			}
			fresh = true
			if err := batchThread(tid); err != nil {
				return err
			}
			done[tid] = true
		}
		if !fresh {
			return nil
		}
	}
	return nil
}

func threads() ([]int, error) {
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil, err
	}
	tids := make([]int, 0, len(ents))
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}

func batchThread(tid int) error {
	attr, err := unix.SchedGetAttr(tid, 0)
	if err == unix.ESRCH {
		return nil // the thread has exited
	}
	if err != nil {
		return fmt.Errorf("read thread %d's scheduling: %w", tid, err)
	}
	if attr.Policy == unix.SCHED_BATCH {
		return nil
	}
	if attr.Policy != unix.SCHED_NORMAL {
		return nil // a real-time or idle policy someone chose: keep it
	}
	attr.Policy = unix.SCHED_BATCH
	if err := unix.SchedSetAttr(tid, attr, 0); err != nil && err != unix.ESRCH {
		return fmt.Errorf("make thread %d SCHED_BATCH: %w", tid, err)
	}
	return nil
}
