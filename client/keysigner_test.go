package client

import (
	"crypto/ed25519"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mcpd/mcpd/auth"
)

func TestKeySignerSealsVerifiableEnvelopes(t *testing.T) {
	priv := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	keys := []auth.Key{
		{Alg: auth.AlgEd25519, Public: priv.Public().(ed25519.PublicKey), Signer: priv},
		{Alg: auth.AlgHMACSHA256, Secret: []byte("a secret of at least sixteen bytes")},
	}
	for _, key := range keys {
		s := &KeySigner{Agent: "cipher", Key: key}
		sealed, err := s.SealEnvelope([]byte(`{"id":"m-1","from":"cipher","ts":1764000000000,"body":{"x":1}}`))
		if err != nil {
			t.Fatal(err)
		}
		e, err := auth.ParseEnvelope(sealed)
		if err != nil {
			t.Fatal(err)
		}
		if err := auth.VerifyEnvelope(e, key); err != nil {
			t.Fatalf("%s: %v", key.Alg, err)
		}
		sig, err := s.SignChallenge(authChallenge("n0nce", "cipher"))
		if err != nil {
			t.Fatal(err)
		}
		if err := auth.VerifyChallenge("n0nce", "cipher", sig, key); err != nil {
			t.Fatalf("%s challenge: %v", key.Alg, err)
		}
	}
}

func TestLoadCredentials(t *testing.T) {
	dir := t.TempDir()
	priv := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	b, err := auth.MarshalCredential("cipher", auth.Key{Alg: auth.AlgEd25519, Signer: priv, Public: priv.Public().(ed25519.PublicKey)})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "cipher.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := LoadCredentials(path)
	if err != nil || s.Agent != "cipher" || s.Alg() != auth.AlgEd25519 {
		t.Fatalf("%+v %v", s, err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCredentials(path); err == nil || !strings.Contains(err.Error(), "open to its group or others") {
		t.Fatalf("a world-readable credential file was accepted: %v", err)
	}
}
