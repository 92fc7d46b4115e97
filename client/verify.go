package client

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mcpd/mcpd/auth"
)

// Verifying senders. The server delivers every envelope byte for byte as
// its sender signed it, so a receiver can check the signature itself
// against the sender's key, which the op agent.key reports. That check
// proves the envelope is unchanged since the holder of the key the
// cluster registered for its "from" agent signed it; it relies on the
// cluster for the key itself. Keys are cached (keycache.go).

// ErrBadSender is wrapped by the errors of VerifyEnvelope that are a
// verdict: the envelope does not prove it comes from its "from" agent. It
// is unsigned (or signed with alg "none", as in --dev mode), malformed,
// signed with another key or algorithm than the sender's, or from an
// agent the cluster does not know. Other errors of VerifyEnvelope mean the
// check could not be made (the sender's key could not be fetched).
var ErrBadSender = errors.New("mcpd client: sender not verified")

// Verified is a received envelope whose sender was checked.
type Verified struct {
	Envelope *auth.Envelope
	// ByServer is set for a sender that signs with hmac-sha256. Only the
	// cluster holds that agent's secret, so only the server could check the
	// signature, which it did before it stored the envelope; this client
	// checked the sig member's form, not its value.
	ByServer bool
	// Revoked is when the sender's identity was revoked (unix ms), or 0.
	// What it signed before its revocation was accepted by the server and
	// still verifies.
	Revoked int64
}

// VerifyEnvelope checks the signature of a received envelope (Delivery.Msg,
// Event.Msg) against the key of its sender, which it fetches with the op
// agent.key and caches (up to 1024 agents, each for 5 minutes; a key that
// fails to verify is fetched once more in case it changed). Ed25519
// signatures are verified here; for hmac-sha256 senders see
// Verified.ByServer. An error wrapping ErrBadSender is a verdict; any other
// error means the key could not be fetched and the check may be retried.
func (c *Client) VerifyEnvelope(ctx context.Context, raw []byte) (*Verified, error) {
	env, err := auth.ParseEnvelope(raw)
	if err != nil {
		return nil, badSender(err)
	}
	if env.Sig == nil {
		return nil, badSender(fmt.Errorf("%w: the envelope is not signed", auth.ErrBadSignature))
	}
	var sig auth.Sig
	if err := json.Unmarshal(env.Sig, &sig); err != nil {
		return nil, badSender(fmt.Errorf("%w: msg.sig must be {alg, kid, v}", auth.ErrBadEnvelope))
	}
	if sig.Alg != auth.AlgEd25519 && sig.Alg != auth.AlgHMACSHA256 {
		return nil, badSender(fmt.Errorf("%w: signed with alg %q", auth.ErrBadSignature, sig.Alg))
	}
	e, fresh, err := c.keys.get(ctx, env.From, nil)
	if err != nil {
		return nil, c.keyError(env.From, err)
	}
	err = checkSender(env, &sig, e.key)
	if err != nil && !fresh {
		// The cached key may be outdated: fetch it once more.
		if e, _, err = c.keys.get(ctx, env.From, e); err != nil {
			return nil, c.keyError(env.From, err)
		}
		err = checkSender(env, &sig, e.key)
	}
	if err != nil {
		return nil, badSender(err)
	}
	return &Verified{Envelope: env, ByServer: e.key.alg == auth.AlgHMACSHA256, Revoked: e.key.revoked}, nil
}

// checkSender checks env, whose sig member is sig, against its sender's key.
func checkSender(env *auth.Envelope, sig *auth.Sig, key senderKey) error {
	if key.alg == auth.AlgEd25519 {
		return auth.VerifyEnvelope(env, auth.Key{Alg: auth.AlgEd25519, Public: key.public})
	}
	// hmac-sha256: the value needs the secret; the form does not.
	if sig.Alg != key.alg {
		return fmt.Errorf("%w: signed with %q, but %s signs with %q", auth.ErrBadSignature, sig.Alg, env.From, key.alg)
	}
	if sig.Kid != env.From {
		return fmt.Errorf("%w: sig.kid %q is not the sender %q", auth.ErrBadSignature, sig.Kid, env.From)
	}
	return nil
}

// keyError maps a failed key lookup: an agent the cluster does not know is
// a verdict, anything else a failure to check.
func (c *Client) keyError(agent string, err error) error {
	if IsCode(err, "not_found") {
		return badSender(fmt.Errorf("%w: the sender %q is not an agent of the cluster", auth.ErrBadSignature, agent))
	}
	return fmt.Errorf("fetching the key of %s: %w", agent, err)
}

// fetchKey asks the cluster for an agent's key with agent.key.
func (c *Client) fetchKey(ctx context.Context, agent string) (senderKey, error) {
	r, err := c.request(ctx, newFrame("agent.key").str("agent", agent), true)
	if err != nil {
		return senderKey{}, err
	}
	var res struct {
		Agent     string `json:"agent"`
		Alg       string `json:"alg"`
		PublicKey string `json:"public_key"`
		Revoked   int64  `json:"revoked"`
	}
	if err := json.Unmarshal(r.raw, &res); err != nil {
		return senderKey{}, fmt.Errorf("decoding the agent.key reply: %w", err)
	}
	if res.Agent != agent {
		return senderKey{}, fmt.Errorf("agent.key for %q answered for %q", agent, res.Agent)
	}
	k := senderKey{alg: res.Alg, revoked: res.Revoked}
	switch res.Alg {
	case auth.AlgEd25519:
		pub, err := base64.StdEncoding.Strict().DecodeString(res.PublicKey)
		if err != nil || len(pub) != ed25519.PublicKeySize {
			return senderKey{}, fmt.Errorf("agent.key for %q: public_key is not a %d-byte key in standard base64", agent, ed25519.PublicKeySize)
		}
		k.public = pub
	case auth.AlgHMACSHA256:
	default:
		return senderKey{}, fmt.Errorf("agent.key for %q: unknown alg %q", agent, res.Alg)
	}
	return k, nil
}

// senderError is a verdict of VerifyEnvelope: it wraps ErrBadSender and
// the reason.
type senderError struct{ reason error }

func badSender(reason error) error { return &senderError{reason} }

func (e *senderError) Error() string   { return ErrBadSender.Error() + ": " + e.reason.Error() }
func (e *senderError) Unwrap() []error { return []error{ErrBadSender, e.reason} }

// rejectReason is the reason a delivery whose sender does not verify is
// rejected with: "bad signature: ..." within the protocol's 1024 bytes.
func rejectReason(err error) string {
	const prefix = "bad signature: "
	msg := err.Error()
	var se *senderError
	if errors.As(err, &se) {
		msg = se.reason.Error()
	}
	return truncate(prefix+strings.TrimPrefix(msg, prefix), maxSettleReason)
}

// maxSettleReason is the most bytes of a reject's or nack's reason the
// server takes.
const maxSettleReason = 1024

// Verify checks the delivery's sender (Client.VerifyEnvelope).
func (d *Delivery) Verify(ctx context.Context) (*Verified, error) {
	return d.c.VerifyEnvelope(ctx, d.Msg)
}

// Verify checks the event's sender (Client.VerifyEnvelope).
func (e *Event) Verify(ctx context.Context) (*Verified, error) {
	if e.c == nil {
		return nil, errors.New("mcpd client: the event was not received by a client")
	}
	return e.c.VerifyEnvelope(ctx, e.Msg)
}

// settleTimeout bounds the reject or nack of a delivery that the client
// settles by itself because its sender did not verify.
const settleTimeout = 30 * time.Second

// admit runs on the consumer's pump when VerifySenders is set: it reports
// whether d goes to the user. A delivery whose sender does not verify is
// rejected (to the dead-letter queue); one that could not be checked is
// handed back to the queue's backoff.
func (k *Consumer) admit(d *Delivery) bool {
	c := k.st.c
	_, err := c.VerifyEnvelope(c.ctx, d.Msg)
	if err == nil {
		// A delivery of a connection that dropped meanwhile comes again.
		return !d.cn.isDead()
	}
	if c.ctx.Err() != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(c.ctx, settleTimeout)
	defer cancel()
	if errors.Is(err, ErrBadSender) {
		c.log.Warn("rejecting a delivery whose sender does not verify", "queue", d.Queue, "seq", d.Seq, "err", err)
		err = d.Reject(ctx, rejectReason(err))
	} else {
		c.log.Warn("cannot verify the sender of a delivery; handing it back", "queue", d.Queue, "seq", d.Seq, "err", err)
		err = d.NackReason(ctx, -1, truncate("cannot verify the sender: "+err.Error(), maxSettleReason))
	}
	if err != nil && !IsStale(err) && c.ctx.Err() == nil {
		c.log.Warn("settling an unverified delivery failed; its lease will run out", "queue", d.Queue, "seq", d.Seq, "err", err)
	}
	return false
}

// admit runs on the subscription's pump when VerifySenders is set: an
// event whose sender does not verify, or cannot be checked, is dropped
// and counted.
func (s *Subscription) admit(ev *Event) bool {
	c := s.st.c
	_, err := c.VerifyEnvelope(c.ctx, ev.Msg)
	if err == nil {
		return true
	}
	if c.ctx.Err() != nil {
		return false // closing: the event is not a verification failure
	}
	s.unverified.Add(1)
	c.log.Warn("dropping an event whose sender is not verified", "topic", ev.Topic, "err", err)
	return false
}

// Verification is Options.VerifySenders.
type Verification int

// Verification modes.
const (
	// VerifyAuto verifies when the client authenticates with an identity.
	VerifyAuto Verification = iota
	// VerifyAlways verifies every envelope received.
	VerifyAlways
	// VerifyNever hands envelopes over unchecked.
	VerifyNever
)

// verifying reports whether received envelopes are checked.
func (c *Client) verifying() bool {
	switch c.opts.VerifySenders {
	case VerifyAlways:
		return true
	case VerifyNever:
		return false
	}
	return c.opts.Signer != nil && c.opts.Signer.Alg() != "none"
}
