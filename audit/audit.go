// Package audit is mcpd's tamper-evident audit log: a hash chain of one
// entry per applied command, kept in state.db beside the state it
// describes and written in the same transaction, and the checkpoints that
// the cluster's audit key signs over its head. It also verifies a chain
// and exports it. The package sees only a bbolt transaction and the
// values the FSM hands it, so every replica that applies the same log
// holds the same chain, byte for byte. docs/security.md ("Audit log")
// specifies the entry encoding for verifiers written elsewhere.
package audit

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	bolt "go.etcd.io/bbolt"
)

// Buckets. Entry and checkpoint keys are big-endian sequence numbers, so
// bbolt's key order is the chain's order.
var (
	bucketEntries     = []byte("audit")     // seq -> entry (body || hash)
	bucketCheckpoints = []byte("auditcp")   // checkpointed seq -> checkpoint record
	bucketMeta        = []byte("auditmeta") // keyHead -> seq(8) || hash(32)
	keyHead           = []byte("head")
)

// Buckets lists the buckets the package owns.
var Buckets = [][]byte{bucketEntries, bucketCheckpoints, bucketMeta}

// CreateBuckets makes sure every bucket exists.
func CreateBuckets(tx *bolt.Tx) error {
	for _, b := range Buckets {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return fmt.Errorf("create bucket %s: %w", b, err)
		}
	}
	return nil
}

// ErrNoLog: the database has no audit buckets (it was written before the
// audit log existed, or it is not a state database).
var ErrNoLog = errors.New("no audit log in this database")

// Format of an entry (version 1). The stored value is body || hash, where
//
//	body = 0x01                      version
//	       seq      uint64 BE        1, 2, 3, ...
//	       ts       int64 BE         leader-stamped time, unix milliseconds
//	       kind     uint16 BE len || UTF-8 bytes
//	       actor    uint16 BE len || UTF-8 bytes
//	       subject  uint16 BE len || UTF-8 bytes
//	       outcome  uint16 BE len || UTF-8 bytes
//	       digest   32 bytes         SHA-256 of the command's details
//	       prev     32 bytes         hash of entry seq-1; zeros for seq 1
//	hash = SHA-256(body)
//
// A fixed binary layout rather than canonical JSON: it costs one small
// allocation and one short SHA-256 per command in the apply loop, it has
// no number-precision or escaping rules to agree on, and it takes a few
// lines to rebuild in any language from an export's fields.
const (
	version    = 1
	fixedLen   = 1 + 8 + 8 + 4*2 + 32 + 32
	hashLen    = sha256.Size
	headValLen = 8 + hashLen
)

// MaxField bounds every string field of an entry, in bytes. Append cuts a
// longer value at a rune boundary.
const MaxField = 1024

// Event is what the FSM records for one applied command.
type Event struct {
	Time    int64  // the command's leader-stamped time, unix ms
	Kind    string // what happened: "enqueue", "agent.revoke", "auth.fail", ...
	Actor   string // who asked: an agent, "operator:NAME", "" for a node
	Subject string // what it concerned: a queue, a topic, an agent, ...
	Outcome string // "ok" or the error code
	Details []byte // the command's body; the entry keeps its SHA-256
}

// Entry is one link of the chain.
type Entry struct {
	Seq     uint64
	Time    int64
	Kind    string
	Actor   string
	Subject string
	Outcome string
	Digest  [32]byte
	Prev    [32]byte
	Hash    [32]byte
}

// Head is the last entry's sequence number and hash (zero for an empty
// chain).
type Head struct {
	Seq  uint64
	Hash [32]byte
}

// MarshalJSON writes {"seq": N, "hash": "<hex>"}.
func (h Head) MarshalJSON() ([]byte, error) {
	return []byte(fmt.Sprintf(`{"seq":%d,"hash":"%x"}`, h.Seq, h.Hash)), nil
}

// Append adds the entry of ev after the head, in tx. It fails only when
// bbolt does.
func Append(tx *bolt.Tx, ev Event) (Head, error) {
	entries, meta := tx.Bucket(bucketEntries), tx.Bucket(bucketMeta)
	if entries == nil || meta == nil {
		return Head{}, ErrNoLog
	}
	head, err := headOf(meta)
	if err != nil {
		return Head{}, err
	}
	e := Entry{
		Seq:     head.Seq + 1,
		Time:    ev.Time,
		Kind:    clean(ev.Kind),
		Actor:   clean(ev.Actor),
		Subject: clean(ev.Subject),
		Outcome: clean(ev.Outcome),
		Digest:  sha256.Sum256(ev.Details),
		Prev:    head.Hash,
	}
	// bbolt keeps the key and value slices until the transaction ends:
	// one allocation holds the key, the value and the new head.
	bodyLen := e.bodyLen()
	buf := make([]byte, 8+bodyLen+hashLen+headValLen)
	key, val, hv := buf[:8], buf[8:8+bodyLen+hashLen], buf[8+bodyLen+hashLen:]
	binary.BigEndian.PutUint64(key, e.Seq)
	e.appendBody(val[:0])
	e.Hash = sha256.Sum256(val[:bodyLen])
	copy(val[bodyLen:], e.Hash[:])
	// Keys only ever grow: full pages, not bbolt's default half-full
	// split, halve the log's size on disk.
	entries.FillPercent = 1.0
	if err := entries.Put(key, val); err != nil {
		return Head{}, err
	}
	h := Head{Seq: e.Seq, Hash: e.Hash}
	copy(hv, key)
	copy(hv[8:], e.Hash[:])
	if err := meta.Put(keyHead, hv); err != nil {
		return Head{}, err
	}
	return h, nil
}

// clean makes a field storable and exportable as it is: valid UTF-8 (a
// JSON string carries it unchanged) of at most MaxField bytes.
func clean(s string) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if len(s) > MaxField {
		cut := MaxField
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut-- // s[cut] continues the rune before it
		}
		s = s[:cut]
	}
	return s
}

func (e *Entry) bodyLen() int {
	return fixedLen + len(e.Kind) + len(e.Actor) + len(e.Subject) + len(e.Outcome)
}

func appendStr(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// appendBody appends the hashed encoding of e (all fields but Hash).
func (e *Entry) appendBody(b []byte) []byte {
	b = append(b, version)
	b = binary.BigEndian.AppendUint64(b, e.Seq)
	b = binary.BigEndian.AppendUint64(b, uint64(e.Time))
	b = appendStr(b, e.Kind)
	b = appendStr(b, e.Actor)
	b = appendStr(b, e.Subject)
	b = appendStr(b, e.Outcome)
	b = append(b, e.Digest[:]...)
	return append(b, e.Prev[:]...)
}

// Body is the canonical encoding of e that its hash covers.
func (e *Entry) Body() []byte { return e.appendBody(make([]byte, 0, e.bodyLen())) }

// ComputeHash is SHA-256 over Body: equal to e.Hash when e is intact.
func (e *Entry) ComputeHash() [32]byte { return sha256.Sum256(e.Body()) }

// errMalformed: a stored value does not parse as an entry.
var errMalformed = errors.New("malformed entry")

// decodeEntry parses a stored value. It does not check the hash.
func decodeEntry(v []byte) (Entry, error) {
	var e Entry
	if len(v) < fixedLen+hashLen {
		return e, fmt.Errorf("%w: %d bytes", errMalformed, len(v))
	}
	if v[0] != version {
		return e, fmt.Errorf("%w: version %d", errMalformed, v[0])
	}
	body := v[:len(v)-hashLen]
	p := body[1:]
	e.Seq = binary.BigEndian.Uint64(p)
	e.Time = int64(binary.BigEndian.Uint64(p[8:]))
	p = p[16:]
	for _, s := range []*string{&e.Kind, &e.Actor, &e.Subject, &e.Outcome} {
		if len(p) < 2 {
			return e, fmt.Errorf("%w: truncated", errMalformed)
		}
		n := int(binary.BigEndian.Uint16(p))
		if len(p) < 2+n {
			return e, fmt.Errorf("%w: truncated", errMalformed)
		}
		*s = string(p[2 : 2+n])
		p = p[2+n:]
	}
	if len(p) != 64 {
		return e, fmt.Errorf("%w: %d bytes after the strings, want 64", errMalformed, len(p))
	}
	copy(e.Digest[:], p)
	copy(e.Prev[:], p[32:])
	copy(e.Hash[:], v[len(v)-hashLen:])
	return e, nil
}

// intact reports whether a stored value's hash covers its body.
func intact(v []byte) bool {
	return sha256.Sum256(v[:len(v)-hashLen]) == [32]byte(v[len(v)-hashLen:])
}

func headOf(meta *bolt.Bucket) (Head, error) { return headRecord(meta, keyHead) }

// headRecord reads a seq(8) || hash(32) record of the meta bucket: the
// head, or the base of a pruned chain. An absent one is zero.
func headRecord(meta *bolt.Bucket, key []byte) (Head, error) {
	v := meta.Get(key)
	if v == nil {
		return Head{}, nil
	}
	if len(v) != headValLen {
		return Head{}, fmt.Errorf("audit %s record has %d bytes, want %d", key, len(v), headValLen)
	}
	return Head{Seq: binary.BigEndian.Uint64(v), Hash: [32]byte(v[8:])}, nil
}

// ReadHead returns the head of the chain.
func ReadHead(tx *bolt.Tx) (Head, error) {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		return Head{}, ErrNoLog
	}
	return headOf(meta)
}

// Get returns the entry at seq; ok is false when there is none. The hash
// is as stored, not checked.
func Get(tx *bolt.Tx, seq uint64) (e Entry, ok bool, err error) {
	b := tx.Bucket(bucketEntries)
	if b == nil {
		return e, false, ErrNoLog
	}
	v := b.Get(seqKey(seq))
	if v == nil {
		return e, false, nil
	}
	e, err = decodeEntry(v)
	return e, err == nil, err
}

func seqKey(seq uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], seq)
	return k[:]
}
