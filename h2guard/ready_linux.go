package h2guard

import (
	"errors"
	"syscall"
)

const rawReadSupported = true

// sysRead uses package syscall, as net does, so the race detector sees
// the same synchronization (grpc-go's readyreader does the same).
func sysRead(fd uintptr, p []byte) (int, error) { return syscall.Read(int(fd), p) }

func wouldBlock(err error) bool { return errors.Is(err, syscall.EAGAIN) }
