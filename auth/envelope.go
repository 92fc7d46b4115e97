// Package auth owns who an agent is and what it may do: agent names,
// envelope parsing and canonicalization (RFC 8785), and, as the trust work
// lands, signatures, identities and ACLs.
package auth

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/gowebpki/jcs"
)

// Errors of envelope checks; the transport maps them to protocol codes.
var (
	ErrBadEnvelope = errors.New("bad envelope")
	ErrWrongSender = errors.New("envelope from another agent")
	ErrSkew        = errors.New("envelope timestamp outside the allowed skew")
)

// Envelope is the parsed view of a signed message. Raw keeps the bytes
// exactly as received: that is what is stored and delivered.
type Envelope struct {
	ID     string
	From   string
	TS     int64
	Intent string
	Parent string
	Body   json.RawMessage
	Sig    json.RawMessage
	Raw    []byte
	// Hash is the SHA-256 of the JCS canonical form, the identity of the
	// content for deduplication.
	Hash [32]byte
}

// ParseEnvelope checks an envelope's shape: an object with id (1–128
// bytes), from (an agent name), ts (integer unix ms), optional string
// intent and parent, any body, and an optional sig object.
func ParseEnvelope(raw []byte) (*Envelope, error) {
	var fields map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&fields); err != nil || fields == nil {
		return nil, fmt.Errorf("%w: msg must be a JSON object", ErrBadEnvelope)
	}
	e := &Envelope{Raw: raw, Body: fields["body"], Sig: fields["sig"]}
	var err error
	if e.ID, err = str(fields, "id", true); err != nil {
		return nil, err
	}
	if len(e.ID) == 0 || len(e.ID) > 128 {
		return nil, fmt.Errorf("%w: msg.id must be 1 to 128 bytes", ErrBadEnvelope)
	}
	if e.From, err = str(fields, "from", true); err != nil {
		return nil, err
	}
	if !ValidAgentName(e.From) {
		return nil, fmt.Errorf("%w: msg.from is not an agent name", ErrBadEnvelope)
	}
	ts, ok := fields["ts"]
	if !ok {
		return nil, fmt.Errorf("%w: msg.ts is required", ErrBadEnvelope)
	}
	if e.TS, err = strconv.ParseInt(string(ts), 10, 64); err != nil {
		return nil, fmt.Errorf("%w: msg.ts must be an integer (unix ms)", ErrBadEnvelope)
	}
	if e.Intent, err = str(fields, "intent", false); err != nil {
		return nil, err
	}
	if e.Parent, err = str(fields, "parent", false); err != nil {
		return nil, err
	}
	if e.Sig != nil && (len(e.Sig) == 0 || e.Sig[0] != '{') {
		return nil, fmt.Errorf("%w: msg.sig must be an object", ErrBadEnvelope)
	}
	canon, err := jcs.Transform(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadEnvelope, err)
	}
	e.Hash = sha256.Sum256(canon)
	return e, nil
}

// CheckDev applies the checks of --dev mode: the sender is the
// authenticated agent, the timestamp is within skewMs of now, and the
// signature, when present, is {"alg":"none",...}.
func (e *Envelope) CheckDev(agent string, now, skewMs int64) error {
	if e.From != agent {
		return fmt.Errorf("%w: msg.from is %q but this connection is %q", ErrWrongSender, e.From, agent)
	}
	if d := e.TS - now; d > skewMs || d < -skewMs {
		return fmt.Errorf("%w: msg.ts is %d ms from the server clock", ErrSkew, d)
	}
	if e.Sig != nil {
		var s struct {
			Alg string `json:"alg"`
		}
		if err := json.Unmarshal(e.Sig, &s); err != nil || s.Alg != "none" {
			return fmt.Errorf("%w: this connection authenticated with alg \"none\" (dev mode), so its envelopes are unsigned: sig must be absent or alg \"none\" (authenticate with the agent's key to send signed envelopes)", ErrBadEnvelope)
		}
	}
	return nil
}

func str(fields map[string]json.RawMessage, name string, required bool) (string, error) {
	raw, ok := fields[name]
	if !ok {
		if required {
			return "", fmt.Errorf("%w: msg.%s is required", ErrBadEnvelope, name)
		}
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fmt.Errorf("%w: msg.%s must be a string", ErrBadEnvelope, name)
	}
	return s, nil
}

// ValidAgentName reports whether s is 1–64 bytes of [A-Za-z0-9._-] not
// ending in ".dlq" (which would make "@NAME.dlq" both an inbox and another
// agent's dead-letter queue).
func ValidAgentName(s string) bool {
	return validName(s, 64) && !strings.HasSuffix(s, ".dlq")
}

// ValidQueueName reports whether s is a queue name: 1–200 bytes of
// [A-Za-z0-9._-], or an inbox "@" + agent name, either followed by any
// number of ".dlq" suffixes (dead-letter queues of dead-letter queues get
// their names that way and must stay reachable).
func ValidQueueName(s string) bool {
	if len(s) > maxQueueRef {
		return false
	}
	base := stripDLQ(s)
	if len(base) > 0 && base[0] == '@' {
		return ValidAgentName(base[1:])
	}
	return validName(base, 200)
}

// maxQueueRef bounds a queue name with its ".dlq" suffixes.
const maxQueueRef = 1024

// stripDLQ removes every trailing ".dlq" that follows a non-empty base.
func stripDLQ(s string) string {
	for len(s) > 4 && strings.HasSuffix(s, ".dlq") {
		s = s[:len(s)-4]
	}
	return s
}

// IsInbox reports whether a queue is an agent inbox or its dead-letter
// queue ("@NAME", "@NAME.dlq").
func IsInbox(queue string) bool { return len(queue) > 0 && queue[0] == '@' }

// InboxAllowed reports whether agent may use an inbox queue: only its own
// "@NAME" and the dead-letter queues below it ("@NAME.dlq", ...).
func InboxAllowed(queue, agent string) bool {
	return stripDLQ(queue) == "@"+agent
}

func validName(s string, max int) bool {
	if len(s) == 0 || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
