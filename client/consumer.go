package client

import (
	"context"
	"encoding/json"
	"fmt"
)

// ConsumeOptions tune a consumer; zero values take the server defaults
// (prefetch 1, lease 30 s).
type ConsumeOptions struct {
	Prefetch int // unacked deliveries in flight, 1–1000
	LeaseMs  int // lease of each delivery, 100–3,600,000
}

// DeadInfo is present on deliveries from a dead-letter queue.
type DeadInfo struct {
	Queue    string `json:"queue"`    // the original queue
	Seq      uint64 `json:"seq"`      // the seq in the original queue
	Reason   string `json:"reason"`   // rejected, rejected: <reason>, max_attempts, max_attempts: <reason of the last nack>
	Attempts int    `json:"attempts"` // deliveries made
}

// Delivery is one leased message. Settle it with exactly one of Ack, Nack
// or Reject; Extend lengthens the lease.
type Delivery struct {
	Queue      string
	Seq        uint64
	Attempt    int
	LeaseUntil int64           // unix ms
	Msg        json.RawMessage // the envelope exactly as the sender sent it
	Dead       *DeadInfo

	c  *Client
	cn *conn
}

// Consumer receives deliveries from one queue. It survives reconnects: the
// client re-issues consume on every new connection.
type Consumer struct {
	Queue string
	Opts  ConsumeOptions

	st  stream
	box *mailbox[*Delivery]
}

// Consume starts a consumer on queue. Deliveries arrive on C (or Next). A
// consume that cannot be sent because the connection dropped or the cluster
// is unavailable is retried until ctx ends.
func (c *Client) Consume(ctx context.Context, queue string, opts ConsumeOptions) (*Consumer, error) {
	f := newFrame("consume").str("queue", queue)
	if opts.Prefetch > 0 {
		f.int("prefetch", int64(opts.Prefetch))
	}
	if opts.LeaseMs > 0 {
		f.int("lease_ms", int64(opts.LeaseMs))
	}
	k := &Consumer{Queue: queue, Opts: opts, box: newMailbox[*Delivery](0)}
	k.st = stream{c: c, kind: kindConsumer, open: f, closeOp: "cancel", idField: "consumer", sink: k}
	if c.verifying() {
		k.box.admit = k.admit
	}
	if err := startPump(c, k.box); err != nil {
		return nil, err
	}
	if err := c.openStream(ctx, &k.st); err != nil {
		k.box.halt(err)
		return nil, fmt.Errorf("consume %s: %w", queue, err)
	}
	return k, nil
}

// startPump runs a mailbox's pump as a goroutine of the client.
func startPump[T any](c *Client, m *mailbox[T]) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		m.pump()
	}()
	return nil
}

// C returns the channel of deliveries. It closes when the consumer is
// cancelled (after the deliveries already received), ends on an error
// (see Err), or the client closes. Deliveries buffered from a connection
// that dropped are discarded: the server delivers them again. With
// Options.VerifySenders only deliveries whose sender verified arrive.
func (k *Consumer) C() <-chan *Delivery { return k.box.ch }

// Next waits for the next delivery (verified as C's are).
func (k *Consumer) Next(ctx context.Context) (*Delivery, error) { return k.box.next(ctx) }

// Err returns why the consumer ended, or nil.
func (k *Consumer) Err() error { return k.box.reason() }

// ID returns the server's id of the consumer on the current connection, or
// "" while it is being re-opened.
func (k *Consumer) ID() string {
	k.st.c.mu.Lock()
	defer k.st.c.mu.Unlock()
	return k.st.id
}

// Cancel stops new deliveries. Deliveries already received stay leased and
// may still be settled; C closes once they are taken.
func (k *Consumer) Cancel(ctx context.Context) error { return k.st.c.closeStream(ctx, &k.st) }

func (k *Consumer) push(cn *conn, f *inFrame) {
	k.box.put(&Delivery{
		Queue:      f.Queue,
		Seq:        f.Seq,
		Attempt:    f.Attempt,
		LeaseUntil: f.LeaseUntil,
		Msg:        json.RawMessage(f.Msg),
		Dead:       f.Dead,
		c:          k.st.c,
		cn:         cn,
	})
}

func (k *Consumer) dropFrom(cn *conn) {
	k.box.filter(func(d *Delivery) bool { return d.cn != cn })
}

func (k *Consumer) end(err error)  { k.box.end(err) }
func (k *Consumer) halt(err error) { k.box.halt(err) }

// Ack settles the delivery as done. IsStale(err) means the lease is gone
// and the message will be (or was) delivered again, or that this ack was
// applied but its answer lost and the resend found it settled; callers may
// ignore it either way.
func (d *Delivery) Ack(ctx context.Context) error {
	_, err := d.settle(ctx, d.frame("ack"))
	return err
}

// Nack hands the delivery back as a failed attempt. It is ready again after
// delayMs (0: at once); a negative delayMs leaves the wait to the queue's
// backoff_ms.
func (d *Delivery) Nack(ctx context.Context, delayMs int64) error {
	return d.NackReason(ctx, delayMs, "")
}

// NackReason is Nack with why the attempt failed (at most 1024 bytes).
// The message's delivery timeline keeps it, and when this was the last
// attempt allowed, the dead letter's reason names it
// ("max_attempts: REASON").
func (d *Delivery) NackReason(ctx context.Context, delayMs int64, reason string) error {
	f := d.frame("nack")
	if delayMs >= 0 {
		f.int("delay_ms", delayMs)
	}
	if reason != "" {
		f.str("reason", reason)
	}
	_, err := d.settle(ctx, f)
	return err
}

// Reject moves the delivery to the queue's dead-letter queue.
func (d *Delivery) Reject(ctx context.Context, reason string) error {
	f := d.frame("reject")
	if reason != "" {
		f.str("reason", reason)
	}
	_, err := d.settle(ctx, f)
	return err
}

// Extend sets the lease to now + leaseMs and returns the new lease end
// (unix ms).
func (d *Delivery) Extend(ctx context.Context, leaseMs int64) (int64, error) {
	r, err := d.settle(ctx, d.frame("extend").int("lease_ms", leaseMs))
	if err != nil {
		return 0, err
	}
	var res struct {
		LeaseUntil int64 `json:"lease_until"`
	}
	if err := json.Unmarshal(r.raw, &res); err != nil {
		return 0, fmt.Errorf("decoding extend reply: %w", err)
	}
	return res.LeaseUntil, nil
}

func (d *Delivery) frame(op string) *frame {
	return newFrame(op).str("queue", d.Queue).uint("seq", d.Seq).int("attempt", int64(d.Attempt))
}

// settle sends f on the delivery's own connection, retrying on unavailable
// while that connection lives.
func (d *Delivery) settle(ctx context.Context, f *frame) (*inFrame, error) {
	var b backoff
	b.min, b.max = d.c.opts.MinBackoff/2, d.c.opts.MaxBackoff
	for {
		if d.cn.isDead() {
			return nil, ErrStaleDelivery
		}
		r, err := d.cn.do(ctx, f, nil, nil)
		switch {
		case err == nil:
			return r, nil
		case d.cn.isDead():
			return nil, fmt.Errorf("%s %s/%d: %w", f.op, d.Queue, d.Seq, ErrStaleDelivery)
		case !IsCode(err, "unavailable") || ctx.Err() != nil:
			return nil, err
		}
		if !sleepCtx(ctx, d.cn.done, b.next()) {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
		}
	}
}
