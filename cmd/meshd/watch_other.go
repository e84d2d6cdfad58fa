//go:build !linux

package main

import "errors"

// watchDirs is not implemented outside Linux: the reload loop polls.
func watchDirs([]string) (<-chan struct{}, func(), error) {
	return nil, func() {}, errors.New("meshd: directory watching needs Linux inotify")
}
