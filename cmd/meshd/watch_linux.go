package main

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
)

// watchDirs reports changes to entries of dirs (created, written and
// closed, renamed in or out, deleted) on the returned channel, coalesced:
// a receiver learns "something changed", not what. stop ends the watch and
// waits for its goroutine. It uses inotify directly so meshd needs no
// file-notification dependency.
func watchDirs(dirs []string) (changes <-chan struct{}, stop func(), err error) {
	fd, err := syscall.InotifyInit1(syscall.IN_CLOEXEC | syscall.IN_NONBLOCK)
	if err != nil {
		return nil, func() {}, fmt.Errorf("meshd: inotify: %w", err)
	}
	const mask = syscall.IN_CLOSE_WRITE | syscall.IN_MOVED_TO | syscall.IN_MOVED_FROM |
		syscall.IN_CREATE | syscall.IN_DELETE | syscall.IN_DELETE_SELF | syscall.IN_MOVE_SELF
	for _, d := range dirs {
		if _, err := syscall.InotifyAddWatch(fd, d, mask); err != nil {
			syscall.Close(fd)
			return nil, func() {}, fmt.Errorf("meshd: watch %s: %w", d, err)
		}
	}
	// A non-blocking descriptor goes through the runtime poller, so Close
	// from stop wakes the blocked Read.
	f := os.NewFile(uintptr(fd), "inotify")
	ch := make(chan struct{}, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 64*(syscall.SizeofInotifyEvent+syscall.NAME_MAX+1))
		for {
			if _, err := f.Read(buf); err != nil {
				if errors.Is(err, os.ErrClosed) {
					return
				}
				// Any other error (an overflow is not one: it is an
				// event) ends the watch; polling still runs.
				return
			}
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			f.Close()
			wg.Wait()
		})
	}, nil
}
