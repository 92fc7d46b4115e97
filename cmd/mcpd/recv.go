package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/mcpd/mcpd/client"
)

const recvUsage = "usage: mcpd recv --queue Q [--count N] [--ack=true] [--prefetch P] [--timeout DUR] [--server URL[,URL]] [--ca FILE] [--agent NAME]"

// recvLine is one delivery as recv prints it.
type recvLine struct {
	Queue   string           `json:"queue"`
	Seq     uint64           `json:"seq"`
	Attempt int              `json:"attempt"`
	Msg     json.RawMessage  `json:"msg"`
	Dead    *client.DeadInfo `json:"dead,omitempty"`
}

// runRecv handles "mcpd recv": it consumes --count deliveries from a queue
// and prints each as one JSON object per line, acking it unless --ack=false.
func runRecv(args []string) error {
	fs := flag.NewFlagSet("recv", flag.ContinueOnError)
	var cf connFlags
	cf.register(fs, "cli", 30*time.Second, "give up when the messages have not all arrived within this time")
	queue := fs.String("queue", "", "queue to consume (@AGENT for an inbox, Q.dlq for a dead-letter queue)")
	count := fs.Int("count", 1, "deliveries to receive; 0 receives until --timeout or Ctrl-C")
	ack := fs.Bool("ack", true, "ack each delivery; with --ack=false they stay leased and come again after recv exits")
	prefetch := fs.Int("prefetch", 0, "unacked deliveries in flight (default 1, or --count with --ack=false)")
	lease := fs.Int("lease-ms", 0, "lease of each delivery in milliseconds (default: the server's, 30000)")
	setUsage(fs, recvUsage)
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return &usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	case *queue == "":
		return &usageError{"--queue is required"}
	case *count < 0:
		return &usageError{"--count must not be negative"}
	case *prefetch < 0 || *prefetch > 1000:
		return &usageError{"--prefetch must be between 1 and 1000"}
	}
	if *prefetch == 0 {
		// With acks, one in flight never leases more than --count. Without,
		// every delivery stays leased, so all must fit.
		switch {
		case *ack:
			*prefetch = 1
		case *count == 0:
			*prefetch = 100
		default:
			*prefetch = min(*count, 1000)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	opts, err := cf.options()
	if err != nil {
		return err
	}
	c, err := dialWith(ctx, opts, cf.timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	wctx, cancel := cf.withTimeout(ctx)
	defer cancel()

	k, err := c.Consume(wctx, *queue, client.ConsumeOptions{Prefetch: *prefetch, LeaseMs: *lease})
	if err != nil {
		return fmt.Errorf("%w%s", err, errHint(err, cf.cred != ""))
	}
	got := 0
	for *count == 0 || got < *count {
		d, err := k.Next(wctx)
		if err != nil {
			if ctx.Err() != nil || (*count == 0 && errors.Is(err, context.DeadlineExceeded)) {
				return nil // interrupted, or an open-ended recv reached --timeout
			}
			if errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("received %d of %d messages from %s within --timeout %v; is anything enqueuing to it?", got, *count, *queue, cf.timeout)
			}
			return fmt.Errorf("consuming %s: %w", *queue, err)
		}
		got++
		if *count > 0 && got == *count {
			// Stop further deliveries before the last ack frees a slot.
			if err := k.Cancel(wctx); err != nil {
				return fmt.Errorf("cancelling the consumer: %w", err)
			}
		}
		if err := printJSON(os.Stdout, recvLine{Queue: d.Queue, Seq: d.Seq, Attempt: d.Attempt, Msg: d.Msg, Dead: d.Dead}); err != nil {
			return err
		}
		if *ack {
			if err := d.Ack(wctx); err != nil {
				if client.IsStale(err) {
					fmt.Fprintf(os.Stderr, "mcpd recv: ack of %s seq %d came too late (connection lost or lease expired); it will be delivered again\n", d.Queue, d.Seq)
					continue
				}
				return fmt.Errorf("ack %s seq %d: %w%s", d.Queue, d.Seq, err, errHint(err, cf.cred != ""))
			}
		}
	}
	return nil
}
