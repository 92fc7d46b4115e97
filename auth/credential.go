package auth

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
)

// Credential is what an agent keeps to prove who it is: the file that
// `mcpd agent add --out FILE` writes (mode 0600) and that the Go client
// loads. The server keeps only the public half of an Ed25519 key.
//
//	{"agent":"cipher","alg":"ed25519","private_key":"<base64 of the 32-byte seed>"}
//	{"agent":"cipher","alg":"hmac-sha256","secret":"<base64 of the secret>"}
type Credential struct {
	Agent      string `json:"agent"`
	Alg        string `json:"alg"`
	PrivateKey string `json:"private_key,omitempty"`
	Secret     string `json:"secret,omitempty"`
	// RedisToken is the password of the agent on the Redis port (AUTH
	// agent token), when it was issued one.
	RedisToken string `json:"redis_token,omitempty"`
}

// ParseCredential reads a credential and returns the agent and its key.
func ParseCredential(b []byte) (string, Key, error) {
	var c Credential
	if err := json.Unmarshal(b, &c); err != nil {
		return "", Key{}, fmt.Errorf("credential: %w", err)
	}
	if !ValidAgentName(c.Agent) {
		return "", Key{}, fmt.Errorf("credential: %q is not an agent name", c.Agent)
	}
	switch c.Alg {
	case AlgEd25519:
		seed, err := base64.StdEncoding.Strict().DecodeString(c.PrivateKey)
		if err != nil || len(seed) != ed25519.SeedSize {
			return "", Key{}, fmt.Errorf("credential: private_key must be a %d-byte Ed25519 seed in standard base64", ed25519.SeedSize)
		}
		priv := ed25519.NewKeyFromSeed(seed)
		return c.Agent, Key{Alg: AlgEd25519, Public: priv.Public().(ed25519.PublicKey), Signer: priv}, nil
	case AlgHMACSHA256:
		secret, err := base64.StdEncoding.Strict().DecodeString(c.Secret)
		if err != nil || len(secret) < 16 {
			return "", Key{}, fmt.Errorf("credential: secret must be at least 16 bytes in standard base64")
		}
		return c.Agent, Key{Alg: AlgHMACSHA256, Secret: secret}, nil
	default:
		return "", Key{}, fmt.Errorf("credential: unknown alg %q (ed25519 or hmac-sha256)", c.Alg)
	}
}

// MarshalCredential writes the credential of agent for key (which must
// hold its private half).
func MarshalCredential(agent string, key Key) ([]byte, error) {
	c := Credential{Agent: agent, Alg: key.Alg}
	switch key.Alg {
	case AlgEd25519:
		if len(key.Signer) != ed25519.PrivateKeySize {
			return nil, fmt.Errorf("credential: ed25519 key without its private half")
		}
		c.PrivateKey = base64.StdEncoding.EncodeToString(key.Signer.Seed())
	case AlgHMACSHA256:
		c.Secret = base64.StdEncoding.EncodeToString(key.Secret)
	default:
		return nil, fmt.Errorf("credential: unknown alg %q", key.Alg)
	}
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// WithRedisToken adds a Redis AUTH token to a marshalled credential.
func WithRedisToken(cred []byte, token string) ([]byte, error) {
	var c Credential
	if err := json.Unmarshal(cred, &c); err != nil {
		return nil, err
	}
	c.RedisToken = token
	return json.MarshalIndent(c, "", "  ")
}
