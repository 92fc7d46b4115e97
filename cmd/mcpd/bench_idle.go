package main

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mcpd/mcpd/client"
)

type idleReport struct {
	Conns          int           `json:"conns"`
	DialSeconds    float64       `json:"dial_seconds"`
	Before         healthFigures `json:"before"`
	Open           healthFigures `json:"open"`
	Closed         healthFigures `json:"closed"`
	RSSPerConn     float64       `json:"rss_bytes_per_conn"`
	GoroutinesPerC float64       `json:"goroutines_per_conn"`
}

// benchIdle opens cfg.idleConns authenticated connections that do nothing
// but answer pings, and reports the server's RSS per connection:
// (RSS with them open - RSS before) / N, read from the health port after
// cfg.settle each time. Then it closes them and reads the figures again.
func benchIdle(ctx context.Context, opts client.Options, cfg benchConfig) error {
	n := cfg.idleConns
	read := func(what string) (healthFigures, error) {
		if err := sleepCtx(ctx, cfg.settle); err != nil {
			return healthFigures{}, err
		}
		h, err := fetchHealth(ctx, cfg.health)
		if err != nil {
			return h, fmt.Errorf("reading the server's figures %s: %w (give --health URL)", what, err)
		}
		return h, nil
	}
	var rep idleReport
	rep.Conns = n
	var err error
	if rep.Before, err = fetchHealth(ctx, cfg.health); err != nil {
		return fmt.Errorf("reading the server's figures before: %w (give --health URL)", err)
	}
	if !cfg.json {
		fmt.Printf("idle connections: %d, health %s\n", n, cfg.health)
		printFigures("before", rep.Before)
	}
	conns := make([]*client.Client, n)
	var (
		next    atomic.Int64
		failed  atomic.Pointer[error]
		wg      sync.WaitGroup
		started = time.Now()
	)
	o := opts
	o.Logger = nil // a closed idle connection is not worth a warning
	for range min(cfg.dialParallel, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for failed.Load() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				c, err := dialWith(ctx, o, 30*time.Second)
				if err != nil {
					err = fmt.Errorf("connection %d of %d: %w", i+1, n, err)
					failed.CompareAndSwap(nil, &err)
					return
				}
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	rep.DialSeconds = round3(time.Since(started).Seconds())
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	if p := failed.Load(); p != nil {
		return fmt.Errorf("%w (the open-file limit of this process or the node's --max-conns may be too low)", *p)
	}
	if rep.Open, err = read("with the connections open"); err != nil {
		return err
	}
	rep.RSSPerConn = round3(float64(rep.Open.RSSBytes-rep.Before.RSSBytes) / float64(n))
	rep.GoroutinesPerC = round3(float64(rep.Open.Goroutines-rep.Before.Goroutines) / float64(n))
	if !cfg.json {
		fmt.Printf("opened %d in %.1f s\n", n, rep.DialSeconds)
		printFigures("open", rep.Open)
	}
	for i, c := range conns {
		c.Close()
		conns[i] = nil
	}
	if rep.Closed, err = read("after closing"); err != nil {
		return err
	}
	if cfg.json {
		return printJSON(os.Stdout, rep)
	}
	printFigures("closed", rep.Closed)
	fmt.Printf("per idle connection: %.1f KiB RSS, %.2f goroutines\n", rep.RSSPerConn/1024, rep.GoroutinesPerC)
	return nil
}

func printFigures(what string, h healthFigures) {
	fmt.Printf("  %-7s RSS %8.1f MB  goroutines %6d  connections %6d\n", what, float64(h.RSSBytes)/(1<<20), h.Goroutines, h.Conns)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
