package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/mcpd/mcpd/client"
)

const benchUsage = `usage: mcpd bench [--queue Q] [--clients C] [--messages N] [--size B] [--window W] [--json] [--server URL[,URL...]] [--ca FILE]
       mcpd bench --duration D [--report-every I] [--health URL] ...   (soak: run the workload for D)
       mcpd bench --idle-conns N [--health URL] ...                    (RSS per idle connection)`

type benchConfig struct {
	queue                           string
	clients, messages, size, window int
	prefetch                        int
	json                            bool
	cred                            bool // --cred was given
	duration, reportEvery           time.Duration
	health                          string
	idleConns, dialParallel         int
	settle                          time.Duration
}

// benchPhase is the outcome of one phase.
type benchPhase struct {
	Messages   int     `json:"messages"`
	Seconds    float64 `json:"seconds"`
	MsgsPerSec float64 `json:"msgs_per_sec"`
	MBPerSec   float64 `json:"mb_per_sec"`
	P50Ms      float64 `json:"p50_ms,omitempty"`
	P90Ms      float64 `json:"p90_ms,omitempty"`
	P99Ms      float64 `json:"p99_ms,omitempty"`
	MaxMs      float64 `json:"max_ms,omitempty"`
	Dups       int64   `json:"dups,omitempty"`
}

type benchReport struct {
	Queue    string     `json:"queue"`
	Servers  []string   `json:"servers"`
	Clients  int        `json:"clients"`
	Messages int        `json:"messages"`
	Size     int        `json:"size"` // envelope bytes per message
	Window   int        `json:"window"`
	Prefetch int        `json:"prefetch"`
	Enqueue  benchPhase `json:"enqueue"`
	Consume  benchPhase `json:"consume"`
}

// runBench handles "mcpd bench": C producers enqueue N messages of about B
// bytes keeping W requests in flight each, then C consumers drain and ack
// exactly N of them.
func runBench(args []string) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var cf connFlags
	cf.register(fs, "bench", 10*time.Minute, "limit for the whole run")
	var cfg benchConfig
	fs.StringVar(&cfg.queue, "queue", "", "queue to use (default bench-RANDOM; use an empty queue)")
	fs.IntVar(&cfg.clients, "clients", 4, "producers, then consumers, each on its own connection (round-robin over --server)")
	fs.IntVar(&cfg.messages, "messages", 10000, "messages to enqueue and then consume")
	fs.IntVar(&cfg.size, "size", 256, "envelope size in bytes (the body is padding)")
	fs.IntVar(&cfg.window, "window", 1, "enqueue requests in flight per producer (1 waits for each ok)")
	fs.IntVar(&cfg.prefetch, "prefetch", 0, "consumer prefetch (default max(window, 64))")
	fs.BoolVar(&cfg.json, "json", false, "print one JSON object instead of a table")
	fs.DurationVar(&cfg.duration, "duration", 0, "soak: enqueue and consume at the same time for this long instead of --messages")
	fs.DurationVar(&cfg.reportEvery, "report-every", 10*time.Second, "soak: print throughput and the server's figures this often")
	fs.StringVar(&cfg.health, "health", "", "the node's health URL for RSS, goroutines and connections (default http://HOST:PORT+1 of the first --server)")
	fs.IntVar(&cfg.idleConns, "idle-conns", 0, "open this many authenticated idle connections and report the server's RSS per connection")
	fs.IntVar(&cfg.dialParallel, "dial-parallel", 32, "idle-conns: handshakes in flight at once")
	fs.DurationVar(&cfg.settle, "settle", 3*time.Second, "idle-conns: wait this long before each RSS reading")
	setUsage(fs, benchUsage)
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg.cred = cf.cred != ""
	switch {
	case fs.NArg() > 0:
		return &usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	case cfg.clients < 1, cfg.messages < 1, cfg.window < 1:
		return &usageError{"--clients, --messages and --window must be at least 1"}
	case cfg.size < 0:
		return &usageError{"--size must not be negative"}
	case cfg.prefetch < 0 || cfg.prefetch > 1000:
		return &usageError{"--prefetch must be between 1 and 1000"}
	case cfg.duration < 0, cfg.reportEvery <= 0, cfg.idleConns < 0, cfg.dialParallel < 1:
		return &usageError{"--duration and --idle-conns must not be negative, --report-every and --dial-parallel must be positive"}
	case cfg.duration > 0 && cfg.idleConns > 0:
		return &usageError{"--duration and --idle-conns are separate modes; give one"}
	}
	if cfg.queue == "" {
		var b [4]byte
		rand.Read(b[:])
		cfg.queue = "bench-" + hex.EncodeToString(b[:])
	}
	if cfg.prefetch == 0 {
		cfg.prefetch = min(max(cfg.window, 64), 1000)
	}
	opts, err := cf.options()
	if err != nil {
		return err
	}
	if cfg.health == "" {
		cfg.health = healthURL(opts.URLs[0])
	}
	if cfg.duration > 0 && cf.timeout > 0 && cf.timeout < cfg.duration+2*time.Minute {
		cf.timeout = cfg.duration + 2*time.Minute // room to drain after the soak
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := cf.withTimeout(ctx)
	defer cancel()
	if cfg.idleConns > 0 {
		return benchIdle(ctx, opts, cfg)
	}

	clients, err := benchDial(ctx, opts, cfg.clients)
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	if err != nil {
		return err
	}
	body, size, err := benchBody(clients[0], cfg.size)
	if err != nil {
		return err
	}
	if cfg.duration > 0 {
		return benchSoak(ctx, clients, cfg, body, size)
	}
	rep := benchReport{Queue: cfg.queue, Servers: opts.URLs, Clients: cfg.clients, Messages: cfg.messages,
		Size: size, Window: cfg.window, Prefetch: cfg.prefetch}
	if rep.Enqueue, err = benchEnqueue(ctx, clients, cfg, body, size); err != nil {
		return err
	}
	if rep.Consume, err = benchConsume(ctx, clients, cfg, size); err != nil {
		return err
	}
	if cfg.json {
		return printJSON(os.Stdout, rep)
	}
	printBench(rep)
	return nil
}

// benchDial opens n connections, client i starting at URL i mod len.
func benchDial(ctx context.Context, opts client.Options, n int) ([]*client.Client, error) {
	clients := make([]*client.Client, 0, n)
	urls := opts.URLs
	for i := range n {
		o := opts
		o.URLs = append(slices.Clone(urls[i%len(urls):]), urls[:i%len(urls)]...)
		c, err := dialWith(ctx, o, 0)
		if err != nil {
			return clients, err
		}
		clients = append(clients, c)
	}
	return clients, nil
}

// benchBody returns a body padding the envelope to about size bytes, and
// the resulting envelope size.
func benchBody(c *client.Client, size int) (string, int, error) {
	env, err := c.NewEnvelope("")
	if err != nil {
		return "", 0, err
	}
	pad := max(size-len(env), 0)
	return strings.Repeat("x", pad), len(env) + pad, nil
}

func benchEnqueue(ctx context.Context, clients []*client.Client, cfg benchConfig, body string, size int) (benchPhase, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		lats = make([]time.Duration, 0, cfg.messages)
		dups atomic.Int64
		done atomic.Int64
	)
	start := time.Now()
	for i, c := range clients {
		var left atomic.Int64
		left.Store(int64(cfg.messages / len(clients)))
		if i < cfg.messages%len(clients) {
			left.Add(1)
		}
		for range cfg.window {
			wg.Add(1)
			go func() {
				defer wg.Done()
				mine := make([]time.Duration, 0, 1024)
				defer func() {
					mu.Lock()
					lats = append(lats, mine...)
					mu.Unlock()
				}()
				for left.Add(-1) >= 0 {
					t0 := time.Now()
					res, err := c.Enqueue(ctx, cfg.queue, body)
					if err != nil {
						if ctx.Err() == nil {
							cancel(fmt.Errorf("enqueue to %s failed: %w%s", cfg.queue, err, errHint(err, cfg.cred)))
						}
						return
					}
					mine = append(mine, time.Since(t0))
					done.Add(1)
					if res.Dup {
						dups.Add(1)
					}
				}
			}()
		}
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := context.Cause(ctx); err != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return benchPhase{}, fmt.Errorf("enqueue phase stopped after %d of %d messages: %w", done.Load(), cfg.messages, err)
		}
		return benchPhase{}, err
	}
	slices.Sort(lats)
	p := phaseRates(cfg.messages, size, elapsed)
	p.P50Ms, p.P90Ms, p.P99Ms = pct(lats, 50), pct(lats, 90), pct(lats, 99)
	p.MaxMs = ms(lats[len(lats)-1])
	p.Dups = dups.Load()
	return p, nil
}

func benchConsume(ctx context.Context, clients []*client.Client, cfg benchConfig, size int) (benchPhase, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		wg      sync.WaitGroup
		claimed atomic.Int64 // deliveries taken for acking, at most N
		acked   atomic.Int64
		all     = errors.New("all messages acked")
	)
	n := int64(cfg.messages)
	start := time.Now()
	for _, c := range clients {
		k, err := c.Consume(ctx, cfg.queue, client.ConsumeOptions{Prefetch: cfg.prefetch})
		if err != nil {
			if errors.Is(context.Cause(ctx), all) {
				break // the consumers already open drained the queue
			}
			return benchPhase{}, fmt.Errorf("%w%s", err, errHint(err, cfg.cred))
		}
		// Acks are pipelined: as many workers as deliveries in flight.
		ackWorkers(ctx, cancel, &wg, k, cfg.queue, cfg.prefetch, cfg.cred, ackHooks{
			claim: func() bool {
				if claimed.Add(1) > n {
					// Beyond N (a queue that was not empty): leave it
					// leased until the connection closes, but keep
					// waiting in case a claimed ack turns out stale.
					claimed.Add(-1)
					return false
				}
				return true
			},
			acked: func() {
				if acked.Add(1) == n {
					cancel(all)
				}
			},
			stale: func() { claimed.Add(-1) }, // it comes again
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := context.Cause(ctx); !errors.Is(err, all) {
		return benchPhase{}, fmt.Errorf("consume phase stopped after %d of %d acks: %w", acked.Load(), n, err)
	}
	return phaseRates(cfg.messages, size, elapsed), nil
}

// ackHooks adapt ackWorkers to a phase: claim (nil: always) decides
// whether to ack a delivery, acked follows each ack, stale (may be nil)
// follows an ack refused because the delivery will come again.
type ackHooks struct {
	claim        func() bool
	acked, stale func()
}

// ackWorkers starts n goroutines that take deliveries from k and ack them.
// A consumer that ends or an ack that fails cancels ctx with the cause.
func ackWorkers(ctx context.Context, cancel context.CancelCauseFunc, wg *sync.WaitGroup, k *client.Consumer, queue string, n int, cred bool, h ackHooks) {
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				var d *client.Delivery
				select {
				case d = <-k.C():
				case <-ctx.Done():
					return
				}
				if d == nil {
					cancel(fmt.Errorf("consumer on %s ended: %v", queue, k.Err()))
					return
				}
				if h.claim != nil && !h.claim() {
					continue
				}
				err := d.Ack(ctx)
				switch {
				case err == nil:
					h.acked()
				case client.IsStale(err):
					if h.stale != nil {
						h.stale()
					}
				case ctx.Err() == nil:
					cancel(fmt.Errorf("ack failed: %w%s", err, errHint(err, cred)))
				}
			}
		}()
	}
}

func phaseRates(n, size int, d time.Duration) benchPhase {
	s := d.Seconds()
	return benchPhase{
		Messages:   n,
		Seconds:    round3(s),
		MsgsPerSec: round3(float64(n) / s),
		MBPerSec:   round3(float64(n) * float64(size) / 1e6 / s),
	}
}

// pct is the p-th percentile of sorted latencies, in milliseconds.
func pct(sorted []time.Duration, p int) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	return ms(sorted[max(i-1, 0)])
}

func ms(d time.Duration) float64 { return round3(float64(d) / float64(time.Millisecond)) }

func round3(f float64) float64 { return float64(int64(f*1000+0.5)) / 1000 }

func printBench(r benchReport) {
	fmt.Printf("queue %s  clients %d  messages %d  envelope %d B  window %d  prefetch %d\n",
		r.Queue, r.Clients, r.Messages, r.Size, r.Window, r.Prefetch)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "phase\tmsgs/s\tMB/s\tp50 ms\tp90 ms\tp99 ms\tmax ms\tseconds\t")
	e, c := r.Enqueue, r.Consume
	fmt.Fprintf(w, "enqueue\t%.0f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t\n", e.MsgsPerSec, e.MBPerSec, e.P50Ms, e.P90Ms, e.P99Ms, e.MaxMs, e.Seconds)
	fmt.Fprintf(w, "consume+ack\t%.0f\t%.2f\t-\t-\t-\t-\t%.2f\t\n", c.MsgsPerSec, c.MBPerSec, c.Seconds)
	w.Flush()
	if e.Dups > 0 {
		fmt.Printf("%d enqueues were retried and deduplicated\n", e.Dups)
	}
}
