package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mcpd/mcpd/client"
)

// healthFigures are the process figures a node reports on /healthz.
type healthFigures struct {
	RSSBytes   int64 `json:"rss_bytes"`
	AnonBytes  int64 `json:"rss_anon_bytes"`
	Goroutines int   `json:"goroutines"`
	Conns      int64 `json:"connections"`
}

// healthURL derives a node's /healthz from its WebSocket URL: the same
// host, the port after the WebSocket port (4433 -> 4434 by default).
func healthURL(wsURL string) string {
	u, err := url.Parse(wsURL)
	if err != nil {
		return ""
	}
	port := 4433
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err == nil {
			port = n
		}
	}
	return "http://" + net.JoinHostPort(u.Hostname(), strconv.Itoa(port+1)) + "/healthz"
}

// fetchHealth reads the figures from a health URL (a base URL gets /healthz).
func fetchHealth(ctx context.Context, hurl string) (healthFigures, error) {
	var h healthFigures
	if hurl == "" {
		return h, errors.New("no health URL")
	}
	if u, err := url.Parse(hurl); err == nil && (u.Path == "" || u.Path == "/") {
		hurl = u.JoinPath("healthz").String()
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, hurl, nil)
	if err != nil {
		return h, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return h, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return h, fmt.Errorf("%s: HTTP %s", hurl, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		return h, fmt.Errorf("%s: %w", hurl, err)
	}
	if h.RSSBytes == 0 {
		return h, fmt.Errorf("%s reports no rss_bytes (an older node?)", hurl)
	}
	return h, nil
}

// soakSample is one report line.
type soakSample struct {
	Elapsed    float64 `json:"elapsed_s"`
	EnqPerSec  float64 `json:"enqueue_per_sec"`
	AckPerSec  float64 `json:"ack_per_sec"`
	P50Ms      float64 `json:"enqueue_p50_ms"`
	P99Ms      float64 `json:"enqueue_p99_ms"`
	RSSBytes   int64   `json:"rss_bytes,omitempty"`
	AnonBytes  int64   `json:"rss_anon_bytes,omitempty"`
	Goroutines int     `json:"goroutines,omitempty"`
	Conns      int64   `json:"connections,omitempty"`
}

// spread summarises a series of figures.
type spread struct {
	Min    float64 `json:"min"`
	Median float64 `json:"median"`
	Max    float64 `json:"max"`
	First  float64 `json:"first"`
	Last   float64 `json:"last"`
	Growth float64 `json:"growth"` // last - first
}

func spreadOf(xs []float64) spread {
	if len(xs) == 0 {
		return spread{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return spread{Min: s[0], Median: med, Max: s[len(s)-1], First: xs[0], Last: xs[len(xs)-1], Growth: xs[len(xs)-1] - xs[0]}
}

type soakReport struct {
	Queue      string       `json:"queue"`
	Clients    int          `json:"clients"`
	Size       int          `json:"size"`
	Window     int          `json:"window"`
	Prefetch   int          `json:"prefetch"`
	Seconds    float64      `json:"seconds"`
	Enqueued   int64        `json:"enqueued"`
	Acked      int64        `json:"acked"`
	EnqPerSec  float64      `json:"enqueue_per_sec"`
	Samples    []soakSample `json:"samples"`
	RSSMB      spread       `json:"rss_mb"`
	AnonMB     spread       `json:"rss_anon_mb"`
	Goroutines spread       `json:"goroutines"`
}

// benchSoak enqueues and consumes at the same time for cfg.duration,
// printing a line every cfg.reportEvery with the throughput of that
// interval and the server's RSS, goroutines and connections; then it
// drains what is left and prints a summary.
func benchSoak(ctx context.Context, clients []*client.Client, cfg benchConfig, body string, size int) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	runCtx, stopProducers := context.WithTimeout(ctx, cfg.duration)
	defer stopProducers()
	var (
		wg, pwg  sync.WaitGroup
		enqueued atomic.Int64
		acked    atomic.Int64
		latMu    sync.Mutex
		lats     []time.Duration
	)
	// Consumers first, so the queue never builds up a large backlog.
	for _, c := range clients {
		k, err := c.Consume(ctx, cfg.queue, client.ConsumeOptions{Prefetch: cfg.prefetch})
		if err != nil {
			return fmt.Errorf("%w%s", err, errHint(err, cfg.cred))
		}
		ackWorkers(ctx, cancel, &wg, k, cfg.queue, cfg.prefetch, cfg.cred, ackHooks{acked: func() { acked.Add(1) }})
	}
	for _, c := range clients {
		for range cfg.window {
			pwg.Add(1)
			go func() {
				defer pwg.Done()
				for runCtx.Err() == nil {
					t0 := time.Now()
					if _, err := c.Enqueue(ctx, cfg.queue, body); err != nil {
						if ctx.Err() == nil {
							cancel(fmt.Errorf("enqueue to %s failed: %w%s", cfg.queue, err, errHint(err, cfg.cred)))
						}
						return
					}
					d := time.Since(t0)
					enqueued.Add(1)
					latMu.Lock()
					lats = append(lats, d)
					latMu.Unlock()
				}
			}()
		}
	}

	rep := soakReport{Queue: cfg.queue, Clients: len(clients), Size: size, Window: cfg.window, Prefetch: cfg.prefetch}
	if !cfg.json {
		fmt.Printf("soak: queue %s  clients %d  envelope %d B  window %d  prefetch %d  for %v, health %s\n",
			cfg.queue, len(clients), size, cfg.window, cfg.prefetch, cfg.duration, cfg.health)
		fmt.Printf("%8s %10s %10s %8s %8s %9s %9s %10s %7s\n", "elapsed", "enq/s", "ack/s", "p50 ms", "p99 ms", "RSS MB", "anon MB", "goroutines", "conns")
	}
	start := time.Now()
	healthWarned := false
	last, lastEnq, lastAck := start, int64(0), int64(0)
	sample := func() {
		now := time.Now()
		enq, ack := enqueued.Load(), acked.Load()
		latMu.Lock()
		iv := lats
		lats = nil
		latMu.Unlock()
		slices.Sort(iv)
		secs := now.Sub(last).Seconds()
		s := soakSample{Elapsed: round3(now.Sub(start).Seconds()), EnqPerSec: round3(float64(enq-lastEnq) / secs),
			AckPerSec: round3(float64(ack-lastAck) / secs), P50Ms: pct(iv, 50), P99Ms: pct(iv, 99)}
		last, lastEnq, lastAck = now, enq, ack
		h, err := fetchHealth(ctx, cfg.health)
		if err == nil {
			s.RSSBytes, s.AnonBytes, s.Goroutines, s.Conns = h.RSSBytes, h.AnonBytes, h.Goroutines, h.Conns
		} else if !healthWarned {
			healthWarned = true
			fmt.Fprintf(os.Stderr, "mcpd bench: no server figures: %v (give --health URL)\n", err)
		}
		rep.Samples = append(rep.Samples, s)
		if cfg.json {
			return
		}
		if err == nil {
			fmt.Printf("%7.0fs %10.0f %10.0f %8.2f %8.2f %9.1f %9.1f %10d %7d\n", s.Elapsed, s.EnqPerSec, s.AckPerSec, s.P50Ms, s.P99Ms,
				float64(s.RSSBytes)/(1<<20), float64(s.AnonBytes)/(1<<20), s.Goroutines, s.Conns)
		} else {
			fmt.Printf("%7.0fs %10.0f %10.0f %8.2f %8.2f %9s %9s %10s %7s\n", s.Elapsed, s.EnqPerSec, s.AckPerSec, s.P50Ms, s.P99Ms, "-", "-", "-", "-")
		}
	}
	tick := time.NewTicker(cfg.reportEvery)
	defer tick.Stop()
loop:
	for {
		select {
		case <-tick.C:
			sample()
		case <-runCtx.Done():
			break loop
		}
	}
	pwg.Wait()
	if err := context.Cause(ctx); err != nil {
		return fmt.Errorf("soak stopped after %v: %w", time.Since(start).Round(time.Second), err)
	}
	if time.Since(last) > cfg.reportEvery/2 || len(rep.Samples) == 0 {
		sample()
	}
	rep.Seconds = round3(time.Since(start).Seconds())
	// Drain: every enqueued message must come back and be acked.
	drainUntil := time.Now().Add(time.Minute)
	for acked.Load() < enqueued.Load() && time.Now().Before(drainUntil) && ctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
	}
	rep.Enqueued, rep.Acked = enqueued.Load(), acked.Load()
	rep.EnqPerSec = round3(float64(rep.Enqueued) / rep.Seconds)
	cancel(nil)
	wg.Wait()
	var rss, anon, gor []float64
	for _, s := range rep.Samples {
		if s.RSSBytes > 0 {
			rss = append(rss, round3(float64(s.RSSBytes)/(1<<20)))
			anon = append(anon, round3(float64(s.AnonBytes)/(1<<20)))
			gor = append(gor, float64(s.Goroutines))
		}
	}
	rep.RSSMB, rep.AnonMB, rep.Goroutines = spreadOf(rss), spreadOf(anon), spreadOf(gor)
	if cfg.json {
		if err := printJSON(os.Stdout, rep); err != nil {
			return err
		}
	} else {
		fmt.Printf("summary: %.0f s, %d enqueued (%.0f/s), %d acked\n", rep.Seconds, rep.Enqueued, rep.EnqPerSec, rep.Acked)
		if len(rss) > 0 {
			r, a, g := rep.RSSMB, rep.AnonMB, rep.Goroutines
			fmt.Printf("  RSS MB      min %.1f  median %.1f  max %.1f  first %.1f  last %.1f  growth %+.1f\n", r.Min, r.Median, r.Max, r.First, r.Last, r.Growth)
			fmt.Printf("  anon MB     min %.1f  median %.1f  max %.1f  first %.1f  last %.1f  growth %+.1f  (RSS less the mapped bbolt files)\n", a.Min, a.Median, a.Max, a.First, a.Last, a.Growth)
			fmt.Printf("  goroutines  min %.0f  median %.0f  max %.0f  first %.0f  last %.0f  growth %+.0f\n", g.Min, g.Median, g.Max, g.First, g.Last, g.Growth)
		}
	}
	if rep.Acked < rep.Enqueued {
		return fmt.Errorf("%d enqueued messages were not consumed within a minute after the soak", rep.Enqueued-rep.Acked)
	}
	return nil
}
