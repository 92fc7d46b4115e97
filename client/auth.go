package client

// Signer proves the agent's identity during the handshake and seals the
// envelopes the client publishes. The zero configuration uses NoneSigner,
// which the server accepts only in --dev mode.
//
// Implementations must be safe for concurrent use.
type Signer interface {
	// Alg is the value of the auth frame's "alg": "none", "ed25519" or
	// "hmac-sha256".
	Alg() string
	// SignChallenge signs the handshake challenge, the bytes
	// "mcp-auth-v1\n" + nonce + "\n" + agent, and returns the "sig" text.
	// It is not called when Alg is "none".
	SignChallenge(challenge []byte) (string, error)
	// SealEnvelope receives a complete unsigned envelope (compact JSON, no
	// "sig" member) and returns the bytes to send, typically the same object
	// with a "sig" member added. The client sends the result unchanged and
	// reuses it byte for byte on every retry.
	SealEnvelope(unsigned []byte) ([]byte, error)
}

// NoneSigner is the development signer: auth with alg "none" and unsigned
// envelopes.
type NoneSigner struct{}

var _ Signer = NoneSigner{}

// Alg returns "none".
func (NoneSigner) Alg() string { return "none" }

// SignChallenge returns an empty signature.
func (NoneSigner) SignChallenge([]byte) (string, error) { return "", nil }

// SealEnvelope returns the envelope unchanged.
func (NoneSigner) SealEnvelope(b []byte) ([]byte, error) { return b, nil }

// authChallenge is the byte string an agent signs to authenticate.
func authChallenge(nonce, agent string) []byte {
	return []byte("mcp-auth-v1\n" + nonce + "\n" + agent)
}
