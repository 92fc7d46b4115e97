package audit

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strconv"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// KindCheckpoint is the kind of the entry that records a checkpoint.
const KindCheckpoint = "audit.checkpoint"

// Checkpoint is the cluster audit key's signature over a head of the
// chain: whoever holds the public key can tell that entries 1..Seq are
// the ones the cluster wrote, even if every copy of the data is later
// rewritten consistently.
type Checkpoint struct {
	Seq    uint64
	Hash   [32]byte
	Public ed25519.PublicKey
	Sig    []byte
}

// Errors of AddCheckpoint.
var (
	// ErrBadCheckpoint: the signature does not verify, or the entry at
	// Seq does not exist or has another hash.
	ErrBadCheckpoint = errors.New("checkpoint does not verify")
	// ErrStaleCheckpoint: a checkpoint at or after Seq is already stored.
	ErrStaleCheckpoint = errors.New("checkpoint is not past the latest one")
)

// CheckpointMessage is what the audit key signs for the head (seq, hash):
//
//	"mcpd-audit-checkpoint-v1\n" + decimal seq + "\n" + lowercase hex hash
func CheckpointMessage(seq uint64, hash [32]byte) []byte {
	b := make([]byte, 0, 25+20+1+64)
	b = append(b, "mcpd-audit-checkpoint-v1\n"...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, '\n')
	return hex.AppendEncode(b, hash[:])
}

// Sign returns the checkpoint of h signed by key.
func Sign(key ed25519.PrivateKey, h Head) Checkpoint {
	return Checkpoint{
		Seq:    h.Seq,
		Hash:   h.Hash,
		Public: key.Public().(ed25519.PublicKey),
		Sig:    ed25519.Sign(key, CheckpointMessage(h.Seq, h.Hash)),
	}
}

// SignatureValid reports whether Sig is Public's signature over (Seq, Hash).
func (c *Checkpoint) SignatureValid() bool {
	return len(c.Public) == ed25519.PublicKeySize && len(c.Sig) == ed25519.SignatureSize &&
		ed25519.Verify(c.Public, CheckpointMessage(c.Seq, c.Hash), c.Sig)
}

// Checkpoint record (version 1): 0x01 || hash(32) || public key(32) || sig(64),
// keyed by the checkpointed seq.
const cpRecordLen = 1 + 32 + ed25519.PublicKeySize + ed25519.SignatureSize

func (c *Checkpoint) record() []byte {
	b := make([]byte, 0, cpRecordLen)
	b = append(b, version)
	b = append(b, c.Hash[:]...)
	b = append(b, c.Public...)
	return append(b, c.Sig...)
}

func decodeCheckpoint(k, v []byte) (Checkpoint, error) {
	if len(k) != 8 {
		return Checkpoint{}, fmt.Errorf("checkpoint key %x is not a sequence number", k)
	}
	c := Checkpoint{Seq: binary.BigEndian.Uint64(k)}
	if len(v) != cpRecordLen || v[0] != version {
		return c, fmt.Errorf("checkpoint record of %d bytes (version %d) does not parse", len(v), firstByte(v))
	}
	c.Hash = [32]byte(v[1:33])
	c.Public = ed25519.PublicKey(bytes.Clone(v[33 : 33+ed25519.PublicKeySize]))
	c.Sig = bytes.Clone(v[33+ed25519.PublicKeySize:])
	return c, nil
}

func firstByte(v []byte) int {
	if len(v) == 0 {
		return -1
	}
	return int(v[0])
}

// AddCheckpoint stores c after checking it against the chain in tx: the
// signature verifies under c.Public, the entry at c.Seq has c.Hash, and
// c.Seq is past the latest stored checkpoint. It writes nothing when a
// check fails. Which public keys to trust is the verifier's business
// (Verify with the cluster's key); the chain only keeps what was signed.
func AddCheckpoint(tx *bolt.Tx, c Checkpoint) error {
	cps, entries := tx.Bucket(bucketCheckpoints), tx.Bucket(bucketEntries)
	if cps == nil || entries == nil {
		return ErrNoLog
	}
	if !c.SignatureValid() {
		return fmt.Errorf("%w: bad signature", ErrBadCheckpoint)
	}
	v := entries.Get(seqKey(c.Seq))
	if v == nil {
		return fmt.Errorf("%w: no entry %d", ErrBadCheckpoint, c.Seq)
	}
	if len(v) < hashLen || !bytes.Equal(v[len(v)-hashLen:], c.Hash[:]) {
		return fmt.Errorf("%w: entry %d has another hash", ErrBadCheckpoint, c.Seq)
	}
	if k, _ := cps.Cursor().Last(); k != nil && len(k) == 8 && binary.BigEndian.Uint64(k) >= c.Seq {
		return fmt.Errorf("%w: latest checkpoint is at %d", ErrStaleCheckpoint, binary.BigEndian.Uint64(k))
	}
	return cps.Put(seqKey(c.Seq), c.record())
}

// GetCheckpoint returns the checkpoint of seq; ok is false when there is
// none.
func GetCheckpoint(tx *bolt.Tx, seq uint64) (c Checkpoint, ok bool, err error) {
	cps := tx.Bucket(bucketCheckpoints)
	if cps == nil {
		return c, false, ErrNoLog
	}
	k := seqKey(seq)
	v := cps.Get(k)
	if v == nil {
		return c, false, nil
	}
	c, err = decodeCheckpoint(k, v)
	return c, err == nil, err
}

// LatestCheckpoint returns the checkpoint of the highest seq; ok is false
// when there is none.
func LatestCheckpoint(tx *bolt.Tx) (c Checkpoint, ok bool, err error) {
	cps := tx.Bucket(bucketCheckpoints)
	if cps == nil {
		return c, false, ErrNoLog
	}
	k, v := cps.Cursor().Last()
	if k == nil {
		return c, false, nil
	}
	c, err = decodeCheckpoint(k, v)
	return c, err == nil, err
}

// CheckpointDue returns the head a leader should checkpoint now, or
// ok=false when there is nothing new: the chain is empty, or its last
// entry is the entry of a checkpoint that signed everything before it.
// A checkpoint's entry that is the head but signed an older seq (entries
// landed between the leader reading the head and the checkpoint
// committing) leaves those entries unsigned: that is due.
func CheckpointDue(tx *bolt.Tx) (h Head, ok bool, err error) {
	if h, err = ReadHead(tx); err != nil || h.Seq == 0 {
		return h, false, err
	}
	e, found, err := Get(tx, h.Seq)
	if err != nil || !found {
		return h, false, err
	}
	if e.Kind != KindCheckpoint {
		return h, true, nil
	}
	c, signed, err := LatestCheckpoint(tx)
	if err != nil {
		return h, false, err
	}
	return h, !signed || c.Seq < h.Seq-1, nil
}

// FormatPublicKey is the text form of an audit public key that nodes
// publish and `mcpd audit verify --key` takes: standard base64 of the 32
// key bytes.
func FormatPublicKey(pub ed25519.PublicKey) string { return base64.StdEncoding.EncodeToString(pub) }

// PublicKeyPEM is pub as a PEM "PUBLIC KEY" block (PKIX), the form other
// tools (openssl, most crypto libraries) read.
func PublicKeyPEM(pub ed25519.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// ParsePublicKey reads an audit public key in any form FormatPublicKey
// or PublicKeyPEM writes, or as 64 hex digits.
func ParsePublicKey(s string) (ed25519.PublicKey, error) {
	s = strings.TrimSpace(s)
	if blk, _ := pem.Decode([]byte(s)); blk != nil {
		if blk.Type != "PUBLIC KEY" {
			return nil, fmt.Errorf("PEM block %q is not a PUBLIC KEY", blk.Type)
		}
		k, err := x509.ParsePKIXPublicKey(blk.Bytes)
		if err != nil {
			return nil, err
		}
		pub, ok := k.(ed25519.PublicKey)
		if !ok {
			return nil, fmt.Errorf("public key is a %T, not Ed25519", k)
		}
		return pub, nil
	}
	if len(s) == 2*ed25519.PublicKeySize {
		if b, err := hex.DecodeString(s); err == nil {
			return ed25519.PublicKey(b), nil
		}
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		b, err = base64.RawStdEncoding.DecodeString(s)
	}
	if err != nil {
		return nil, errors.New("audit public key is neither base64, hex nor PEM")
	}
	if len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("audit public key has %d bytes, want %d", len(b), ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(b), nil
}
