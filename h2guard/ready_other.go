//go:build !linux

package h2guard

const rawReadSupported = false

func sysRead(uintptr, []byte) (int, error) { panic("h2guard: raw reads only on linux") }

func wouldBlock(error) bool { return false }
