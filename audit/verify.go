package audit

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Reason says how a chain is broken.
type Reason string

// Reasons, in the words verify prints.
const (
	// Changed: the entry's bytes are not what its hash covers, or do not
	// parse; or the head record disagrees with the last entry.
	Changed Reason = "changed"
	// Missing: the entry with this seq is absent (entries after it may
	// follow), including entries cut off the end.
	Missing Reason = "missing"
	// Reordered: the entry is intact but out of place: it carries another
	// seq, or its prev is not the hash of the entry before it (entries
	// swapped or inserted, or the previous entry rewritten with a new hash).
	Reordered Reason = "reordered"
	// BadSignature: a checkpoint's signature does not verify, or it was
	// made by another key than the one the verifier trusts.
	BadSignature Reason = "bad checkpoint signature"
	// CheckpointMismatch: a validly signed checkpoint names a hash the
	// entry at its seq does not have: the chain was rewritten after it.
	CheckpointMismatch Reason = "checkpoint does not match"
)

// Report is the outcome of Verify.
type Report struct {
	OK          bool   `json:"ok"`
	Entries     uint64 `json:"entries"`     // entries found intact and in order
	Head        Head   `json:"head"`        // the last of them
	Checkpoints int    `json:"checkpoints"` // checkpoints verified among them
	// KeyGiven: checkpoints were checked against the verifier's key.
	// Without one, each was checked against the key it names, which
	// proves only that whoever made it held that key.
	KeyGiven bool `json:"key_given"`
	// First is the first seq checked when it is not 1: a range (an
	// export after some seq, a tail) takes that entry's prev on trust.
	First uint64 `json:"first,omitempty"`
	// Pruned is the base of a pruned chain: the entries up to it were
	// removed (Prune), and the first one kept links to its hash, which
	// the checkpoints after it cover.
	Pruned uint64 `json:"pruned_through,omitempty"`
	// Set when OK is false: the first broken seq and why.
	BrokenSeq uint64 `json:"broken_seq,omitempty"`
	Reason    Reason `json:"reason,omitempty"`
	Detail    string `json:"detail,omitempty"`
}

// String is the one-line verdict `mcpd audit verify` prints.
func (r Report) String() string {
	if !r.OK {
		return fmt.Sprintf("broken at seq %d: %s: %s", r.BrokenSeq, r.Reason, r.Detail)
	}
	s := fmt.Sprintf("ok: %d entries, head %x, %d checkpoints", r.Entries, r.Head.Hash, r.Checkpoints)
	switch {
	case r.Pruned > 0 && r.Checkpoints == 0:
		s = fmt.Sprintf("ok: %d entries from seq %d (entries up to %d were pruned; no checkpoint covers the base, so it is taken on trust), head %x", r.Entries, r.Pruned+1, r.Pruned, r.Head.Hash)
	case r.Pruned > 0:
		s = fmt.Sprintf("ok: %d entries from seq %d (entries up to %d were pruned; the checkpoints cover the base), head %x, %d checkpoints", r.Entries, r.Pruned+1, r.Pruned, r.Head.Hash, r.Checkpoints)
	case r.First > 1:
		s = fmt.Sprintf("ok: %d entries from seq %d (its prev taken on trust), head %x, %d checkpoints", r.Entries, r.First, r.Head.Hash, r.Checkpoints)
	}
	if !r.KeyGiven && r.Checkpoints > 0 {
		s += " (signatures checked against the keys the checkpoints name; pass the cluster's audit key to check who signed)"
	}
	return s
}

// Verify checks the whole chain in tx: every entry's hash, the order of
// seqs and prev links from seq 1 (or from the base of a pruned chain),
// the head record, and every checkpoint's signature and hash. pub, if not nil, is the cluster's audit public key;
// checkpoints signed by any other key then fail. The report names the
// first broken seq. The error is for a database without an audit log.
func Verify(tx *bolt.Tx, pub ed25519.PublicKey) (Report, error) {
	entries, cps, meta := tx.Bucket(bucketEntries), tx.Bucket(bucketCheckpoints), tx.Bucket(bucketMeta)
	if entries == nil || cps == nil || meta == nil {
		return Report{}, ErrNoLog
	}
	v := verifier{r: Report{KeyGiven: pub != nil}, pub: pub, cps: cps.Cursor()}
	var err error
	if v.head, err = headOf(meta); err != nil {
		v.fail(1, Changed, "%v", err)
		return v.r, nil
	}
	base, err := baseOf(meta)
	if err != nil {
		v.fail(1, Changed, "%v", err)
		return v.r, nil
	}
	if base.Seq > 0 {
		v.r.Head, v.prev, v.r.Pruned = base, base.Hash, base.Seq
	}
	v.cpK, v.cpV = v.cps.First()
	c := entries.Cursor()
	for k, val := c.First(); k != nil; k, val = c.Next() {
		if !v.entry(k, val) {
			return v.r, nil
		}
	}
	v.end()
	return v.r, nil
}

type verifier struct {
	r        Report
	pruneRec bool // the entry recording the prune to the base was seen
	pub      ed25519.PublicKey
	prev     [32]byte
	head     Head // the head record
	cps      *bolt.Cursor
	cpK, cpV []byte // the next checkpoint not yet checked
}

func (v *verifier) fail(seq uint64, why Reason, format string, args ...any) bool {
	v.r.OK, v.r.BrokenSeq, v.r.Reason, v.r.Detail = false, seq, why, fmt.Sprintf(format, args...)
	return false
}

// entry checks the next stored entry; false once the chain is broken.
func (v *verifier) entry(k, val []byte) bool {
	want := v.r.Head.Seq + 1
	if len(k) != 8 {
		return v.fail(want, Changed, "a key %x that is not a sequence number", k)
	}
	seq := binary.BigEndian.Uint64(k)
	switch {
	case seq > want:
		if seq == want+1 {
			return v.fail(want, Missing, "entry %d is absent (the next one stored is %d)", want, seq)
		}
		return v.fail(want, Missing, "entries %d to %d are absent", want, seq-1)
	case seq < want: // seq 0, or one at or before a pruned chain's base
		return v.fail(seq, Reordered, "an entry stored under seq %d, which is at or before the chain's base %d", seq, v.r.Pruned)
	}
	e, err := decodeEntry(val)
	if err != nil {
		return v.fail(seq, Changed, "%v", err)
	}
	if !intact(val) {
		return v.fail(seq, Changed, "its content does not hash to its stored hash %x", e.Hash)
	}
	if e.Seq != seq {
		return v.fail(seq, Reordered, "the entry stored under seq %d is entry %d", seq, e.Seq)
	}
	if seq > v.head.Seq {
		return v.fail(seq, Changed, "entry %d is past the head record (%d): entries were added outside the log", seq, v.head.Seq)
	}
	if seq == v.head.Seq && e.Hash != v.head.Hash {
		return v.fail(seq, Changed, "the head record names hash %x for it", v.head.Hash)
	}
	if e.Prev != v.prev {
		return v.fail(seq, Reordered, "its prev %x is not the hash of entry %d (%x): the entries were reordered, or entry %d was rewritten",
			e.Prev, seq-1, v.prev, seq-1)
	}
	// Checkpoints before this seq name entries that are not there.
	if v.cpK != nil && (len(v.cpK) != 8 || binary.BigEndian.Uint64(v.cpK) < seq) {
		return v.badCheckpointKey()
	}
	if v.cpK != nil && binary.BigEndian.Uint64(v.cpK) == seq {
		if !v.checkpoint(&e) {
			return false
		}
		v.cpK, v.cpV = v.cps.Next()
	}
	if v.r.Pruned > 0 && recordsPrune(&e, v.r.Pruned) {
		v.pruneRec = true
	}
	v.prev = e.Hash
	v.r.Head = Head{Seq: seq, Hash: e.Hash}
	v.r.Entries++
	return true
}

func (v *verifier) badCheckpointKey() bool {
	if len(v.cpK) != 8 {
		return v.fail(v.r.Head.Seq+1, CheckpointMismatch, "a checkpoint key %x that is not a sequence number", v.cpK)
	}
	seq := binary.BigEndian.Uint64(v.cpK)
	return v.fail(seq, CheckpointMismatch, "a checkpoint of entry %d, which is not in the chain", seq)
}

func (v *verifier) checkpoint(e *Entry) bool {
	c, err := decodeCheckpoint(v.cpK, v.cpV)
	if err != nil {
		return v.fail(e.Seq, BadSignature, "%v", err)
	}
	if v.pub != nil && !bytes.Equal(c.Public, v.pub) {
		return v.fail(e.Seq, BadSignature, "the checkpoint is signed by key %s, not by the given key %s",
			FormatPublicKey(c.Public), FormatPublicKey(v.pub))
	}
	if !c.SignatureValid() {
		return v.fail(e.Seq, BadSignature, "the signature of checkpoint (%d, %x) by key %s does not verify",
			c.Seq, c.Hash, FormatPublicKey(c.Public))
	}
	if c.Hash != e.Hash {
		return v.fail(e.Seq, CheckpointMismatch, "the signed checkpoint says hash %x, the entry has %x: the chain up to %d was rewritten after it was signed",
			c.Hash, e.Hash, e.Seq)
	}
	v.r.Checkpoints++
	return true
}

// end checks what follows the last entry: the head record and the
// checkpoints of later seqs.
func (v *verifier) end() {
	last := v.r.Head
	if v.head.Seq > last.Seq {
		v.fail(last.Seq+1, Missing, "the head record names entry %d, the last entry is %d: entries were cut off the end", v.head.Seq, last.Seq)
		return
	}
	if v.cpK != nil {
		if len(v.cpK) == 8 && binary.BigEndian.Uint64(v.cpK) > last.Seq {
			v.fail(last.Seq+1, Missing, "a checkpoint covers entry %d, the last entry is %d: entries were cut off the end",
				binary.BigEndian.Uint64(v.cpK), last.Seq)
			return
		}
		v.badCheckpointKey()
		return
	}
	if v.r.Pruned > 0 && !v.pruneRec {
		v.fail(v.r.Pruned, Missing, "%s", unrecordedBase(v.r.Pruned))
		return
	}
	v.r.OK = true
}
