package auth

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/gowebpki/jcs"
)

// Signature algorithms of envelopes and of the authentication challenge.
const (
	AlgEd25519    = "ed25519"
	AlgHMACSHA256 = "hmac-sha256"
	AlgNone       = "none" // --dev only
)

// ErrBadSignature: the signature does not verify, or names another key or
// algorithm than the sender's. The transport answers bad_signature.
var ErrBadSignature = errors.New("bad signature")

// Key is what verifies (and, with its private half, makes) an agent's
// signatures: an Ed25519 public key, or an HMAC-SHA256 secret.
type Key struct {
	Alg    string
	Public ed25519.PublicKey  // AlgEd25519
	Secret []byte             // AlgHMACSHA256
	Signer ed25519.PrivateKey // optional: the agent's own key, to sign
}

// Sig is the sig member of an envelope.
type Sig struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
	V   string `json:"v"`
}

// SigningBytes returns what an envelope's signature covers: the RFC 8785
// (JCS) canonical JSON of the envelope without its sig member. raw must be
// a JSON object.
func SigningBytes(raw []byte) ([]byte, error) {
	fields, err := objectFields(raw)
	if err != nil {
		return nil, err
	}
	delete(fields, "sig")
	b, err := json.Marshal(fields)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadEnvelope, err)
	}
	canon, err := jcs.Transform(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadEnvelope, err)
	}
	return canon, nil
}

// objectFields decodes a JSON object keeping every value's bytes; a
// repeated member name is refused (the canonical form would be ambiguous).
func objectFields(raw []byte) (map[string]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		return nil, fmt.Errorf("%w: msg must be a JSON object", ErrBadEnvelope)
	}
	fields := map[string]json.RawMessage{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadEnvelope, err)
		}
		name, _ := tok.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadEnvelope, err)
		}
		if _, dup := fields[name]; dup {
			return nil, fmt.Errorf("%w: member %q appears twice", ErrBadEnvelope, name)
		}
		fields[name] = v
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadEnvelope, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: data after the object", ErrBadEnvelope)
	}
	return fields, nil
}

// SignEnvelope returns the envelope raw with a sig member made by key for
// the agent kid, replacing any sig it had. The result's members are in
// JCS order; its signature covers SigningBytes of the result.
func SignEnvelope(raw []byte, kid string, key Key) ([]byte, error) {
	msg, err := SigningBytes(raw)
	if err != nil {
		return nil, err
	}
	v, err := sign(msg, key)
	if err != nil {
		return nil, err
	}
	fields, err := objectFields(raw)
	if err != nil {
		return nil, err
	}
	sig, err := json.Marshal(Sig{Alg: key.Alg, Kid: kid, V: v})
	if err != nil {
		return nil, err
	}
	fields["sig"] = sig
	b, err := json.Marshal(fields)
	if err != nil {
		return nil, err
	}
	return jcs.Transform(b)
}

// VerifyEnvelope checks the signature of a parsed envelope against the
// key of its sender (e.From): the sig member must name that agent and the
// key's algorithm, and its value must verify over SigningBytes.
func VerifyEnvelope(e *Envelope, key Key) error {
	if e.Sig == nil {
		return fmt.Errorf("%w: the envelope is not signed", ErrBadSignature)
	}
	var s Sig
	if err := json.Unmarshal(e.Sig, &s); err != nil {
		return fmt.Errorf("%w: msg.sig must be {alg, kid, v}", ErrBadEnvelope)
	}
	if s.Alg != key.Alg {
		return fmt.Errorf("%w: signed with %q, but %s signs with %q", ErrBadSignature, s.Alg, e.From, key.Alg)
	}
	if s.Kid != e.From {
		return fmt.Errorf("%w: sig.kid %q is not the sender %q", ErrBadSignature, s.Kid, e.From)
	}
	msg, err := SigningBytes(e.Raw)
	if err != nil {
		return err
	}
	return verify(msg, s.V, key)
}

// ChallengeBytes is what an agent signs to authenticate a connection:
// "mcp-auth-v1\n" + nonce (as sent by the server) + "\n" + agent.
func ChallengeBytes(nonce, agent string) []byte {
	return []byte("mcp-auth-v1\n" + nonce + "\n" + agent)
}

// SignChallenge signs the authentication challenge with the agent's key.
func SignChallenge(nonce, agent string, key Key) (string, error) {
	return sign(ChallengeBytes(nonce, agent), key)
}

// Sign returns the encoded signature of msg with key (lowercase hex for
// HMAC-SHA256, standard base64 for Ed25519).
func Sign(msg []byte, key Key) (string, error) { return sign(msg, key) }

// VerifyChallenge checks an auth signature.
func VerifyChallenge(nonce, agent, sig string, key Key) error {
	return verify(ChallengeBytes(nonce, agent), sig, key)
}

// sign makes the encoded signature of msg: lowercase hex for HMAC-SHA256,
// standard padded base64 for Ed25519.
func sign(msg []byte, key Key) (string, error) {
	switch key.Alg {
	case AlgHMACSHA256:
		if len(key.Secret) == 0 {
			return "", errors.New("hmac-sha256 key without a secret")
		}
		m := hmac.New(sha256.New, key.Secret)
		m.Write(msg)
		return hex.EncodeToString(m.Sum(nil)), nil
	case AlgEd25519:
		if len(key.Signer) != ed25519.PrivateKeySize {
			return "", errors.New("ed25519 key without its private half")
		}
		return base64.StdEncoding.EncodeToString(ed25519.Sign(key.Signer, msg)), nil
	default:
		return "", fmt.Errorf("cannot sign with algorithm %q", key.Alg)
	}
}

func verify(msg []byte, v string, key Key) error {
	switch key.Alg {
	case AlgHMACSHA256:
		got, err := hex.DecodeString(v)
		if err != nil || len(got) != sha256.Size || v != hex.EncodeToString(got) {
			return fmt.Errorf("%w: hmac-sha256 signatures are 64 lowercase hex digits", ErrBadSignature)
		}
		m := hmac.New(sha256.New, key.Secret)
		m.Write(msg)
		if !hmac.Equal(got, m.Sum(nil)) {
			return fmt.Errorf("%w: hmac-sha256 does not match", ErrBadSignature)
		}
		return nil
	case AlgEd25519:
		got, err := base64.StdEncoding.Strict().DecodeString(v)
		if err != nil || len(got) != ed25519.SignatureSize {
			return fmt.Errorf("%w: ed25519 signatures are 64 bytes in standard padded base64", ErrBadSignature)
		}
		if len(key.Public) != ed25519.PublicKeySize || !ed25519.Verify(key.Public, msg, got) {
			return fmt.Errorf("%w: ed25519 signature does not verify", ErrBadSignature)
		}
		return nil
	default:
		return fmt.Errorf("%w: unknown algorithm %q", ErrBadSignature, key.Alg)
	}
}
