package auth

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestClusterKeySealOpen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cluster.key")
	if err := CreateClusterKeyFile(path); err != nil {
		t.Fatal(err)
	}
	if err := CreateClusterKeyFile(path); err == nil {
		t.Fatal("an existing key file was replaced")
	}
	k, err := LoadClusterKey(path)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := LoadClusterKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if k.ID() != k2.ID() || !bytes.Equal(k.AuditPublicKey(), k2.AuditPublicKey()) {
		t.Fatal("the same file gave different keys")
	}
	secret := []byte("0123456789abcdef0123")
	sealed, err := k.Seal("cipher", secret)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, secret) {
		t.Fatal("sealed secret contains the secret")
	}
	got, err := k2.Open("cipher", sealed)
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("open = %q, %v", got, err)
	}
	if _, err := k.Open("editor", sealed); !errors.Is(err, ErrSealed) {
		t.Fatalf("opened under another agent's name: %v", err)
	}
	flipped := bytes.Clone(sealed)
	flipped[len(flipped)-1] ^= 1
	if _, err := k.Open("cipher", flipped); !errors.Is(err, ErrSealed) {
		t.Fatalf("opened a damaged seal: %v", err)
	}
	other, err := NewClusterKey(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Open("cipher", sealed); !errors.Is(err, ErrSealed) {
		t.Fatalf("another cluster's key opened the secret: %v", err)
	}
	sig := ed25519.Sign(k.AuditKey(), []byte("head"))
	if !ed25519.Verify(k2.AuditPublicKey(), []byte("head"), sig) {
		t.Fatal("audit key differs between loads")
	}
}

func TestClusterKeyFileChecks(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cluster.key")
	if err := CreateClusterKeyFile(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadClusterKey(path); err == nil {
		t.Fatal("a world-readable key file was accepted")
	}
	short := filepath.Join(dir, "short.key")
	if err := os.WriteFile(short, []byte("AAAA\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadClusterKey(short); err == nil {
		t.Fatal("a 3-byte key was accepted")
	}
}

func TestAgentJSONShowsTokenNotHash(t *testing.T) {
	for _, hash := range [][]byte{nil, bytes.Repeat([]byte{1}, 32)} {
		b, err := json.Marshal(Agent{Name: "cipher", Alg: AlgEd25519, TokenHash: hash, Sealed: []byte("s")})
		if err != nil {
			t.Fatal(err)
		}
		want := `"redis_token":` + map[bool]string{true: "true", false: "false"}[hash != nil]
		if !bytes.Contains(b, []byte(want)) || bytes.Contains(b, []byte(`"name":"cipher"`)) == false ||
			bytes.Contains(b, []byte("TokenHash")) || bytes.Contains(b, []byte("Sealed")) {
			t.Fatalf("%s: want %s and no secret material", b, want)
		}
	}
}
