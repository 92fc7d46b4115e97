package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
)

// EnqueueResult is the server's answer to an enqueue or send.
type EnqueueResult struct {
	Seq uint64 // position in the queue (the original one for a duplicate)
	Dup bool   // the server already had this envelope
	ID  string // the envelope id
}

// Enqueue stores body durably in queue. It builds one envelope and, on
// unavailable or a connection lost before the reply, resends that same
// envelope with backoff until ctx ends: the server deduplicates, and the
// result then has Dup set.
func (c *Client) Enqueue(ctx context.Context, queue string, body any, opts ...EnqueueOption) (EnqueueResult, error) {
	o := collect(opts)
	env, err := c.newEnvelope(body, o)
	if err != nil {
		return EnqueueResult{}, err
	}
	return c.enqueue(ctx, newFrame("enqueue").str("queue", queue), env, o)
}

// EnqueueRaw stores a ready-made envelope (see NewEnvelope) byte for byte,
// with the same retries as Enqueue. Envelope options are ignored.
func (c *Client) EnqueueRaw(ctx context.Context, queue string, env []byte, opts ...EnqueueOption) (EnqueueResult, error) {
	if !json.Valid(env) {
		return EnqueueResult{}, errors.New("enqueue: envelope is not valid JSON")
	}
	return c.enqueue(ctx, newFrame("enqueue").str("queue", queue), env, collect(opts))
}

// Send stores body in the inbox of agent to (queue @to), with the retries
// of Enqueue.
func (c *Client) Send(ctx context.Context, to string, body any, opts ...EnqueueOption) (EnqueueResult, error) {
	o := collect(opts)
	env, err := c.newEnvelope(body, o)
	if err != nil {
		return EnqueueResult{}, err
	}
	return c.enqueue(ctx, newFrame("send").str("to", to), env, o)
}

// SendRaw is Send with a ready-made envelope.
func (c *Client) SendRaw(ctx context.Context, to string, env []byte, opts ...EnqueueOption) (EnqueueResult, error) {
	if !json.Valid(env) {
		return EnqueueResult{}, errors.New("send: envelope is not valid JSON")
	}
	return c.enqueue(ctx, newFrame("send").str("to", to), env, collect(opts))
}

func (c *Client) enqueue(ctx context.Context, f *frame, env []byte, o msgOptions) (EnqueueResult, error) {
	f.raw("msg", env)
	if o.hasPriority {
		f.int("priority", int64(o.priority))
	}
	if o.delayMs > 0 {
		f.int("delay_ms", o.delayMs)
	}
	id := envelopeID(env)
	r, err := c.request(ctx, f, true)
	if err != nil {
		return EnqueueResult{ID: id}, fmt.Errorf("%s: %w", f.op, err)
	}
	var res struct {
		Seq uint64 `json:"seq"`
		Dup bool   `json:"dup"`
	}
	if err := json.Unmarshal(r.raw, &res); err != nil {
		return EnqueueResult{ID: id}, fmt.Errorf("%s: decoding reply: %w", f.op, err)
	}
	return EnqueueResult{Seq: res.Seq, Dup: res.Dup, ID: id}, nil
}

// QueueSettings are a queue's delivery policy. In DeclareQueue, zero
// fields are left as they are; in its result, MaxLen 0 means unbounded.
type QueueSettings struct {
	MaxAttempts int
	BackoffMs   []int64
	DLQ         string
	MaxLen      int64
}

// DeclareQueue creates queue or updates the settings it names, and returns
// the settings in force.
func (c *Client) DeclareQueue(ctx context.Context, queue string, s QueueSettings) (QueueSettings, error) {
	f := newFrame("queue.declare").str("queue", queue)
	if s.MaxAttempts > 0 {
		f.int("max_attempts", int64(s.MaxAttempts))
	}
	if s.BackoffMs != nil {
		f.any("backoff_ms", s.BackoffMs)
	}
	if s.DLQ != "" {
		f.str("dlq", s.DLQ)
	}
	if s.MaxLen > 0 {
		f.int("max_len", s.MaxLen)
	}
	r, err := c.request(ctx, f, true)
	if err != nil {
		return QueueSettings{}, fmt.Errorf("queue.declare %s: %w", queue, err)
	}
	var res struct {
		MaxAttempts int     `json:"max_attempts"`
		BackoffMs   []int64 `json:"backoff_ms"`
		DLQ         string  `json:"dlq"`
		MaxLen      *int64  `json:"max_len"`
	}
	if err := json.Unmarshal(r.raw, &res); err != nil {
		return QueueSettings{}, fmt.Errorf("queue.declare %s: decoding reply: %w", queue, err)
	}
	out := QueueSettings{MaxAttempts: res.MaxAttempts, BackoffMs: res.BackoffMs, DLQ: res.DLQ}
	if res.MaxLen != nil {
		out.MaxLen = *res.MaxLen
	}
	return out, nil
}

// QueueStats are the counters of queue.info.
type QueueStats struct {
	Ready     int64 `json:"ready"`
	Inflight  int64 `json:"inflight"`
	Delayed   int64 `json:"delayed"`
	Dead      int64 `json:"dead"`
	Consumers int64 `json:"consumers"`
}

// QueueInfo returns the counters of queue (zeros for an unknown queue).
func (c *Client) QueueInfo(ctx context.Context, queue string) (QueueStats, error) {
	r, err := c.request(ctx, newFrame("queue.info").str("queue", queue), true)
	if err != nil {
		return QueueStats{}, fmt.Errorf("queue.info %s: %w", queue, err)
	}
	var s QueueStats
	if err := json.Unmarshal(r.raw, &s); err != nil {
		return QueueStats{}, fmt.Errorf("queue.info %s: decoding reply: %w", queue, err)
	}
	return s, nil
}

// PingResult is the answer to ping.
type PingResult struct {
	Node   string // the node serving this connection
	Leader string // the current leader, "" when there is none
	Time   int64  // the node's clock, unix ms
}

// Ping asks the connected node for its id, the leader and its clock.
func (c *Client) Ping(ctx context.Context) (PingResult, error) {
	r, err := c.request(ctx, newFrame("ping"), true)
	if err != nil {
		return PingResult{}, fmt.Errorf("ping: %w", err)
	}
	var res struct {
		Node   string  `json:"node"`
		Leader *string `json:"leader"`
		Time   int64   `json:"time"`
	}
	if err := json.Unmarshal(r.raw, &res); err != nil {
		return PingResult{}, fmt.Errorf("ping: decoding reply: %w", err)
	}
	p := PingResult{Node: res.Node, Time: res.Time}
	if res.Leader != nil {
		p.Leader = *res.Leader
	}
	return p, nil
}

// Do sends a raw request (any op, fields marshalled as JSON; "op" and
// "rid" are set by the client) and returns the whole ok frame. It waits for
// a connection but never retries: the caller knows whether op is safe to
// repeat. Server errors are *Error.
func (c *Client) Do(ctx context.Context, op string, fields map[string]any) (json.RawMessage, error) {
	f := newFrame(op)
	keys := make([]string, 0, len(fields))
	for k := range fields {
		if k != "op" && k != "rid" {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		switch v := fields[k].(type) {
		case json.RawMessage:
			if !json.Valid(v) {
				return nil, fmt.Errorf("%s: field %q is not valid JSON", op, k)
			}
			f.raw(k, v)
		default:
			f.any(k, v)
		}
	}
	r, err := c.request(ctx, f, false)
	if err != nil {
		return nil, err
	}
	return json.RawMessage(r.raw), nil
}
