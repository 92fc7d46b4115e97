package audit

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"io"
)

// Chain checks exported records handed to it in order: what a reader
// following a node's log (tail) or reading an export does, trusting
// nothing the node says that the chain and the signatures do not prove.
// A range that starts after seq 1 takes its first record's prev on trust.
type Chain struct {
	pub      ed25519.PublicKey
	r        Report
	first    uint64
	base     Head                   // From: where the records must start
	pruneRec bool                   // the entry recording the prune to base was seen
	recent   [recentHashes][32]byte // hash of seq s at s % recentHashes
}

// recentHashes is how far back a checkpoint may name an entry and still
// be matched: the leader proposes the head it applied, and at most the
// entries in flight (64 batches of 1024 commands) separate that head from
// the checkpoint's own entry.
const recentHashes = 1 << 17

// NewChain returns a checker; pub, if not nil, is the only key trusted to
// sign checkpoints.
func NewChain(pub ed25519.PublicKey) *Chain {
	return &Chain{pub: pub, r: Report{KeyGiven: pub != nil}}
}

// From makes the chain start at the base of a pruned log (Base): the
// first record must follow it and link to its hash, and one record must
// record the prune that reached it, as Verify requires.
func (c *Chain) From(base Head) {
	c.base = base
	c.r.Pruned = base.Seq
}

// Add checks the next record. It returns false once the chain is broken;
// Report then says where.
func (c *Chain) Add(rec *Record) bool {
	if c.r.BrokenSeq != 0 {
		return false
	}
	seq := rec.Seq
	if c.first == 0 && c.base.Seq > 0 {
		if seq != c.base.Seq+1 {
			return c.fail(c.base.Seq+1, Missing, "the log was pruned up to %d, but its first entry is %d", c.base.Seq, seq)
		}
		c.first = seq
		c.r.Head = c.base
		c.recent[c.base.Seq%recentHashes] = c.base.Hash
	}
	if c.first == 0 {
		c.first = seq
		if seq == 1 && rec.Prev != [32]byte{} {
			return c.fail(seq, Reordered, "entry 1's prev is not zero")
		}
		c.r.Head = Head{Seq: seq - 1, Hash: rec.Prev}
		c.recent[(seq-1)%recentHashes] = rec.Prev
	}
	want := c.r.Head.Seq + 1
	switch {
	case seq > want:
		// A stream cannot tell an entry that is late from one that
		// never comes.
		return c.fail(want, Missing, "entry %d is absent here (entry %d came next)", want, seq)
	case seq < want:
		return c.fail(seq, Reordered, "entry %d comes after entry %d", seq, want-1)
	case rec.ComputeHash() != rec.Hash:
		return c.fail(seq, Changed, "its fields do not hash to its hash %x", rec.Hash)
	case rec.Prev != c.r.Head.Hash:
		return c.fail(seq, Reordered, "its prev %x is not the hash of entry %d (%x)", rec.Prev, seq-1, c.r.Head.Hash)
	}
	if c.base.Seq > 0 && recordsPrune(&rec.Entry, c.base.Seq) {
		c.pruneRec = true
	}
	c.recent[seq%recentHashes] = rec.Hash
	c.r.Head = Head{Seq: seq, Hash: rec.Hash}
	c.r.Entries++
	if cp := rec.Checkpoint; cp != nil {
		if !c.checkpoint(cp) {
			return false
		}
	}
	return true
}

func (c *Chain) checkpoint(cp *Checkpoint) bool {
	if c.pub != nil && !bytes.Equal(cp.Public, c.pub) {
		return c.fail(cp.Seq, BadSignature, "the checkpoint is signed by key %s, not by the given key", FormatPublicKey(cp.Public))
	}
	if !cp.SignatureValid() {
		return c.fail(cp.Seq, BadSignature, "the signature of checkpoint (%d, %x) does not verify", cp.Seq, cp.Hash)
	}
	if cp.Seq >= c.r.Head.Seq {
		return c.fail(cp.Seq, CheckpointMismatch, "a checkpoint of entry %d recorded by entry %d", cp.Seq, c.r.Head.Seq)
	}
	// The hashes known: from the range's first prev to the head, the
	// last recentHashes of them. Beyond, the signature alone is checked.
	known := cp.Seq+1 >= c.first && cp.Seq+recentHashes > c.r.Head.Seq
	if got := c.recent[cp.Seq%recentHashes]; known && got != cp.Hash {
		return c.fail(cp.Seq, CheckpointMismatch, "the signed checkpoint says hash %x, the entry has %x: the chain up to %d was rewritten after it was signed",
			cp.Hash, got, cp.Seq)
	}
	c.r.Checkpoints++
	return true
}

func (c *Chain) fail(seq uint64, why Reason, format string, args ...any) bool {
	c.r.OK, c.r.BrokenSeq, c.r.Reason, c.r.Detail = false, seq, why, fmt.Sprintf(format, args...)
	return false
}

// Report is the verdict on the records added so far.
func (c *Chain) Report() Report {
	r := c.r
	r.OK = r.BrokenSeq == 0
	if c.first > 1 && c.base.Seq == 0 {
		r.First = c.first
	}
	if r.OK && c.base.Seq > 0 && !c.pruneRec {
		r.OK, r.BrokenSeq, r.Reason = false, c.base.Seq, Missing
		r.Detail = unrecordedBase(c.base.Seq)
	}
	return r
}

// VerifyExport checks an export (JSON lines, as Export writes them) with
// a Chain. The error is for input that is not an export.
func VerifyExport(rd io.Reader, pub ed25519.PublicKey) (Report, error) {
	c := NewChain(pub)
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var rec Record
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			return c.Report(), fmt.Errorf("line %d: %w", line, err)
		}
		if !c.Add(&rec) {
			break
		}
	}
	return c.Report(), sc.Err()
}
