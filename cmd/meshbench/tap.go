package main

import (
	"bufio"
	"context"
	"net/http"
	"sync"
)

// startTapper attaches a live tap to the meshd whose admin port is admin,
// as `meshd tap` would, at the highest rate meshd allows, and reads every
// line until the returned stop is called. meshd-tap against meshd is then
// what a tap costs the data path while someone watches. The tap's own
// errors are not the harness's: a tap that ends early leaves meshd-tap
// measuring an untapped meshd, which shows as a ratio near 1.
func startTapper(ctx context.Context, admin string) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/tap?rate=1000", nil)
		if err != nil {
			return
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return
		}
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
		}
	}()
	return func() {
		cancel()
		wg.Wait()
	}
}
