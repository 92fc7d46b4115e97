package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
)

// Publish broadcasts body to the subscriptions on topic and returns how
// many received it (a lower bound when the cluster cannot tell; 0 for a
// duplicate). Retries are as for Enqueue.
func (c *Client) Publish(ctx context.Context, topic string, body any, opts ...EnqueueOption) (int, error) {
	env, err := c.newEnvelope(body, collect(opts))
	if err != nil {
		return 0, err
	}
	return c.PublishRaw(ctx, topic, env)
}

// PublishRaw is Publish with a ready-made envelope.
func (c *Client) PublishRaw(ctx context.Context, topic string, env []byte) (int, error) {
	if !json.Valid(env) {
		return 0, errors.New("publish: envelope is not valid JSON")
	}
	r, err := c.request(ctx, newFrame("publish").str("topic", topic).raw("msg", env), true)
	if err != nil {
		return 0, fmt.Errorf("publish %s: %w", topic, err)
	}
	var res struct {
		Receivers int `json:"receivers"`
	}
	if err := json.Unmarshal(r.raw, &res); err != nil {
		return 0, fmt.Errorf("publish %s: decoding reply: %w", topic, err)
	}
	return res.Receivers, nil
}

// Event is one message published on a topic the subscription matches.
type Event struct {
	Topic string          // the topic it was published on
	Msg   json.RawMessage // the envelope exactly as the publisher sent it

	c *Client
}

// Subscription receives events for a topic pattern. It survives
// reconnects (events published while disconnected are lost: pub/sub is
// at-most-once).
type Subscription struct {
	Topic string

	st         stream
	box        *mailbox[*Event]
	unverified atomic.Uint64
}

// Subscribe subscribes to topic (wildcards * and > allowed), retrying on a
// dropped connection or unavailable until ctx ends.
func (c *Client) Subscribe(ctx context.Context, topic string) (*Subscription, error) {
	s := &Subscription{Topic: topic, box: newMailbox[*Event](c.opts.EventBuffer)}
	s.st = stream{c: c, kind: kindSub, open: newFrame("subscribe").str("topic", topic),
		closeOp: "unsubscribe", idField: "sub", sink: s}
	if c.verifying() {
		s.box.admit = s.admit
	}
	if err := startPump(c, s.box); err != nil {
		return nil, err
	}
	if err := c.openStream(ctx, &s.st); err != nil {
		s.box.halt(err)
		return nil, fmt.Errorf("subscribe %s: %w", topic, err)
	}
	return s, nil
}

// C returns the channel of events; it closes on Unsubscribe, on an error
// (see Err) or when the client closes. With Options.VerifySenders only
// events whose sender verified arrive.
func (s *Subscription) C() <-chan *Event { return s.box.ch }

// Next waits for the next event (verified as C's are).
func (s *Subscription) Next(ctx context.Context) (*Event, error) { return s.box.next(ctx) }

// Err returns why the subscription ended, or nil.
func (s *Subscription) Err() error { return s.box.reason() }

// Dropped counts events discarded because the buffer was full.
func (s *Subscription) Dropped() uint64 { return s.box.droppedCount() }

// Unverified counts events discarded because their sender did not verify
// or could not be checked (Options.VerifySenders).
func (s *Subscription) Unverified() uint64 { return s.unverified.Load() }

// ID returns the server's id of the subscription on the current
// connection, or "" while it is being re-opened.
func (s *Subscription) ID() string {
	s.st.c.mu.Lock()
	defer s.st.c.mu.Unlock()
	return s.st.id
}

// Unsubscribe removes the subscription; C closes after the buffered events.
func (s *Subscription) Unsubscribe(ctx context.Context) error {
	return s.st.c.closeStream(ctx, &s.st)
}

func (s *Subscription) push(_ *conn, f *inFrame) {
	if !s.box.put(&Event{Topic: f.Topic, Msg: json.RawMessage(f.Msg), c: s.st.c}) {
		s.st.c.log.Debug("subscription buffer full; dropping event", "topic", s.Topic)
	}
}

func (s *Subscription) dropFrom(*conn) {} // events hold no lease
func (s *Subscription) end(err error)  { s.box.end(err) }
func (s *Subscription) halt(err error) { s.box.halt(err) }
