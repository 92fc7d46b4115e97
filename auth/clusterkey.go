package auth

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/mcpd/mcpd/internal/durable"
)

// ClusterKey is the secret every node of a cluster is given in the same
// file (--cluster-key-file). It never enters the replicated state: HMAC
// secrets are sealed under it before they are proposed, so a stolen
// snapshot or data directory does not reveal them, and the cluster's
// audit checkpoint key is derived from it.
type ClusterKey struct {
	seal  cipher.AEAD
	audit ed25519.PrivateKey
	id    string
}

// clusterKeySize is the length of the random key the file holds.
const clusterKeySize = 32

// ErrSealed is returned when a sealed secret does not open under this
// node's cluster key: another cluster's key, or a damaged record.
var ErrSealed = errors.New("sealed secret does not open under this cluster key")

// NewClusterKey derives the sealing and audit keys from raw key bytes.
func NewClusterKey(raw []byte) (*ClusterKey, error) {
	if len(raw) != clusterKeySize {
		return nil, fmt.Errorf("cluster key must be %d bytes, not %d", clusterKeySize, len(raw))
	}
	sealKey, err := hkdf.Key(sha256.New, raw, nil, "mcpd secret sealing v1", 32)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(sealKey)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	seed, err := hkdf.Key(sha256.New, raw, nil, "mcpd audit checkpoint key v1", ed25519.SeedSize)
	if err != nil {
		return nil, err
	}
	idSum, err := hkdf.Key(sha256.New, raw, nil, "mcpd cluster key id v1", 8)
	if err != nil {
		return nil, err
	}
	return &ClusterKey{seal: aead, audit: ed25519.NewKeyFromSeed(seed), id: fmt.Sprintf("%x", idSum)}, nil
}

// LoadClusterKey reads a cluster key file: the standard base64 of 32
// random bytes. A file others can read is refused.
func LoadClusterKey(path string) (*ClusterKey, error) {
	b, err := ReadPrivateFile(path, "cluster key")
	if err != nil {
		return nil, err
	}
	raw, err := base64.StdEncoding.Strict().DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("%s: cluster key must be standard base64: %v", path, err)
	}
	k, err := NewClusterKey(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// CreateClusterKeyFile writes a new random cluster key to path (mode
// 0600), refusing to replace an existing file.
func CreateClusterKeyFile(path string) error {
	raw := make([]byte, clusterKeySize)
	if _, err := rand.Read(raw); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(base64.StdEncoding.EncodeToString(raw) + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return err
	}
	return durable.SyncDir(filepath.Dir(path))
}

// ID names the key without revealing it (16 hex digits), so operators can
// check that every node was given the same file.
func (k *ClusterKey) ID() string { return k.id }

// Seal encrypts an agent's HMAC secret. The agent name is bound as
// associated data: a sealed secret copied onto another agent's record does
// not open.
func (k *ClusterKey) Seal(agent string, secret []byte) ([]byte, error) {
	nonce := make([]byte, k.seal.NonceSize(), k.seal.NonceSize()+len(secret)+k.seal.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return k.seal.Seal(nonce, nonce, secret, []byte("agent:"+agent)), nil
}

// Open decrypts what Seal produced for the same agent.
func (k *ClusterKey) Open(agent string, sealed []byte) ([]byte, error) {
	n := k.seal.NonceSize()
	if len(sealed) < n+k.seal.Overhead() {
		return nil, ErrSealed
	}
	secret, err := k.seal.Open(nil, sealed[:n], sealed[n:], []byte("agent:"+agent))
	if err != nil {
		return nil, ErrSealed
	}
	return secret, nil
}

// AuditKey is the cluster's audit checkpoint signing key: the same on
// every node given the same cluster key file.
func (k *ClusterKey) AuditKey() ed25519.PrivateKey { return k.audit }

// AuditPublicKey is the public half of AuditKey, which every node publishes.
func (k *ClusterKey) AuditPublicKey() ed25519.PublicKey {
	return k.audit.Public().(ed25519.PublicKey)
}

// ReadPrivateFile reads a file that holds a secret (what names it in
// errors). A file that others can read or write is refused, as ssh
// refuses such a key: its secret may be known already.
func ReadPrivateFile(path, what string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s: %s file is open to its group or others (mode %v); chmod 600 it, owned by the user mcpd runs as", path, what, fi.Mode().Perm())
	}
	return os.ReadFile(path)
}
