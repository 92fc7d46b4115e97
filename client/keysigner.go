package client

import (
	"fmt"

	"github.com/mcpd/mcpd/auth"
)

// KeySigner signs as one agent with its Ed25519 key or HMAC-SHA256 secret:
// the handshake challenge and every envelope (RFC 8785 canonical JSON
// without sig, docs/signing.md). It is safe for concurrent use.
type KeySigner struct {
	Agent string
	Key   auth.Key
}

var _ Signer = (*KeySigner)(nil)

// LoadCredentials reads a credential file (`mcpd agent add --out FILE`).
// A file that others can read is refused, as ssh refuses such a key.
func LoadCredentials(path string) (*KeySigner, error) {
	b, err := auth.ReadPrivateFile(path, "credential")
	if err != nil {
		return nil, err
	}
	agent, key, err := auth.ParseCredential(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &KeySigner{Agent: agent, Key: key}, nil
}

// Alg is the key's algorithm.
func (s *KeySigner) Alg() string { return s.Key.Alg }

// SignChallenge signs the handshake challenge.
func (s *KeySigner) SignChallenge(challenge []byte) (string, error) {
	return auth.Sign(challenge, s.Key)
}

// SealEnvelope adds the sig member to an unsigned envelope.
func (s *KeySigner) SealEnvelope(unsigned []byte) ([]byte, error) {
	return auth.SignEnvelope(unsigned, s.Agent, s.Key)
}
