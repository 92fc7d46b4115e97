package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/oklog/ulid/v2"
)

// Envelope is the decoded form of a message envelope. Use ParseEnvelope on
// Delivery.Msg or Event.Msg; the raw bytes remain the authority (for
// signature checks).
type Envelope struct {
	ID     string          `json:"id"`
	From   string          `json:"from"`
	TS     int64           `json:"ts"`
	Intent string          `json:"intent,omitempty"`
	Parent string          `json:"parent,omitempty"`
	Body   json.RawMessage `json:"body"`
	Sig    json.RawMessage `json:"sig,omitempty"`
}

// ParseEnvelope decodes an envelope.
func ParseEnvelope(raw []byte) (*Envelope, error) {
	var e Envelope
	if err := json.Unmarshal(raw, &e); err != nil {
		return nil, fmt.Errorf("decoding envelope: %w", err)
	}
	if e.ID == "" || e.From == "" {
		return nil, errors.New("envelope without id or from")
	}
	return &e, nil
}

// EnqueueOption sets optional parts of a published message. Intent, parent
// and ID shape the envelope (Enqueue, Send, Publish); priority and delay
// apply to Enqueue and Send.
type EnqueueOption func(*msgOptions)

type msgOptions struct {
	priority    int
	hasPriority bool
	delayMs     int64
	intent      string
	parent      string
	id          string
}

// WithPriority sets the priority, 0–9 (default 0; higher first).
func WithPriority(p int) EnqueueOption {
	return func(o *msgOptions) { o.priority, o.hasPriority = p, true }
}

// WithDelay makes the message ready only after ms milliseconds.
func WithDelay(ms int64) EnqueueOption { return func(o *msgOptions) { o.delayMs = ms } }

// WithIntent records the originator's purpose in the envelope.
func WithIntent(intent string) EnqueueOption { return func(o *msgOptions) { o.intent = intent } }

// WithParent records the envelope id this message derives from.
func WithParent(id string) EnqueueOption { return func(o *msgOptions) { o.parent = id } }

// WithID sets the envelope id instead of a fresh ULID: an id the caller
// derives from its work, say. The server deduplicates by sender and id
// only an identical envelope: another Enqueue with the same id stamps a
// new ts and is refused "conflict". To repeat a message from another
// process, keep the bytes NewEnvelope made and send them again with
// EnqueueRaw (SendRaw, PublishRaw): a repeat within the 2-minute dedup
// window is answered "dup" with the first one's seq.
func WithID(id string) EnqueueOption { return func(o *msgOptions) { o.id = id } }

func collect(opts []EnqueueOption) msgOptions {
	var o msgOptions
	for _, f := range opts {
		f(&o)
	}
	return o
}

// envelopeOut is the wire order of an envelope the client builds.
type envelopeOut struct {
	ID     string `json:"id"`
	From   string `json:"from"`
	TS     int64  `json:"ts"`
	Intent string `json:"intent,omitempty"`
	Parent string `json:"parent,omitempty"`
	Body   any    `json:"body"`
}

// NewEnvelope builds and seals an envelope from this client's agent, as
// Enqueue would, without sending it. body is marshalled to JSON; a
// json.RawMessage is used as is. Send the result with EnqueueRaw,
// SendRaw or PublishRaw.
func (c *Client) NewEnvelope(body any, opts ...EnqueueOption) ([]byte, error) {
	return c.newEnvelope(body, collect(opts))
}

func (c *Client) newEnvelope(body any, o msgOptions) ([]byte, error) {
	id := o.id
	if id == "" {
		id = ulid.Make().String()
	}
	env := envelopeOut{
		ID:     id,
		From:   c.opts.Agent,
		TS:     time.Now().UnixMilli(),
		Intent: o.intent,
		Parent: o.parent,
		Body:   body,
	}
	b, err := marshalNoEscape(env)
	if err != nil {
		return nil, fmt.Errorf("encoding message body: %w", err)
	}
	sealed, err := c.signer.SealEnvelope(b)
	if err != nil {
		return nil, fmt.Errorf("signing envelope: %w", err)
	}
	return sealed, nil
}

// envelopeID extracts the id of a raw envelope, "" if it has none.
func envelopeID(raw []byte) string {
	var e struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(raw, &e) != nil {
		return ""
	}
	return e.ID
}
