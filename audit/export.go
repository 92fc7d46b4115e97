package audit

import (
	"bufio"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"strconv"

	bolt "go.etcd.io/bbolt"
)

// Record is an entry as exported: the entry, and for an entry that
// recorded a checkpoint, that checkpoint.
type Record struct {
	Entry
	Checkpoint *Checkpoint
}

// CheckpointSubject is the subject of the entry that records the
// checkpoint of seq.
func CheckpointSubject(seq uint64) string { return strconv.FormatUint(seq, 10) }

// ReadRange returns up to limit entries after seq after, in order, each
// as stored (Verify checks them; a reader following the log checks each
// with ComputeHash and Prev). An entry that does not parse ends the range
// with an error.
func ReadRange(tx *bolt.Tx, after uint64, limit int) ([]Record, error) {
	entries, cps := tx.Bucket(bucketEntries), tx.Bucket(bucketCheckpoints)
	if entries == nil || cps == nil {
		return nil, ErrNoLog
	}
	var out []Record
	c := entries.Cursor()
	for k, v := c.Seek(seqKey(after + 1)); k != nil && len(out) < limit; k, v = c.Next() {
		e, err := decodeEntry(v)
		if err != nil {
			return out, fmt.Errorf("entry under key %x: %w", k, err)
		}
		out = append(out, record(cps, e))
	}
	return out, nil
}

// record is e as exported: with its checkpoint when it recorded one.
func record(cps *bolt.Bucket, e Entry) Record {
	r := Record{Entry: e}
	if e.Kind == KindCheckpoint && e.Outcome == "ok" {
		if seq, err := strconv.ParseUint(e.Subject, 10, 64); err == nil {
			if v := cps.Get(seqKey(seq)); v != nil {
				if cp, err := decodeCheckpoint(seqKey(seq), v); err == nil {
					r.Checkpoint = &cp
				}
			}
		}
	}
	return r
}

// Export writes the entries after seq since as JSON lines (see Record's
// JSON form) and returns how many it wrote.
func Export(tx *bolt.Tx, since uint64, w io.Writer) (n uint64, err error) {
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	const chunk = 1024
	for {
		recs, err := ReadRange(tx, since, chunk)
		for i := range recs {
			if err := enc.Encode(&recs[i]); err != nil {
				return n, err
			}
			n++
			since = recs[i].Seq
		}
		if err != nil {
			bw.Flush()
			return n, err
		}
		if len(recs) < chunk {
			return n, bw.Flush()
		}
	}
}

// jsonRecord is the exported form: hashes in lowercase hex, keys and
// signatures in standard base64, times in unix milliseconds.
type jsonRecord struct {
	Seq        uint64          `json:"seq"`
	Time       int64           `json:"ts"`
	Kind       string          `json:"kind"`
	Actor      string          `json:"actor"`
	Subject    string          `json:"subject"`
	Outcome    string          `json:"outcome"`
	Digest     string          `json:"digest"`
	Prev       string          `json:"prev"`
	Hash       string          `json:"hash"`
	Checkpoint *jsonCheckpoint `json:"checkpoint,omitempty"`
}

type jsonCheckpoint struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
	Key  string `json:"key"`
	Sig  string `json:"sig"`
}

// MarshalJSON implements json.Marshaler.
func (r *Record) MarshalJSON() ([]byte, error) {
	j := jsonRecord{
		Seq: r.Seq, Time: r.Time, Kind: r.Kind, Actor: r.Actor, Subject: r.Subject, Outcome: r.Outcome,
		Digest: hex.EncodeToString(r.Digest[:]), Prev: hex.EncodeToString(r.Prev[:]), Hash: hex.EncodeToString(r.Hash[:]),
	}
	if c := r.Checkpoint; c != nil {
		j.Checkpoint = &jsonCheckpoint{Seq: c.Seq, Hash: hex.EncodeToString(c.Hash[:]),
			Key: base64.StdEncoding.EncodeToString(c.Public), Sig: base64.StdEncoding.EncodeToString(c.Sig)}
	}
	return json.Marshal(&j)
}

// UnmarshalJSON implements json.Unmarshaler.
func (r *Record) UnmarshalJSON(b []byte) error {
	var j jsonRecord
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*r = Record{Entry: Entry{Seq: j.Seq, Time: j.Time, Kind: j.Kind, Actor: j.Actor, Subject: j.Subject, Outcome: j.Outcome}}
	for _, f := range []struct {
		name string
		s    string
		dst  *[32]byte
	}{{"digest", j.Digest, &r.Digest}, {"prev", j.Prev, &r.Prev}, {"hash", j.Hash, &r.Hash}} {
		if err := hex32(f.s, f.dst); err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
	}
	if jc := j.Checkpoint; jc != nil {
		c := &Checkpoint{Seq: jc.Seq}
		if err := hex32(jc.Hash, &c.Hash); err != nil {
			return fmt.Errorf("checkpoint hash: %w", err)
		}
		var err error
		if c.Public, err = base64.StdEncoding.DecodeString(jc.Key); err != nil {
			return fmt.Errorf("checkpoint key: %w", err)
		}
		if c.Sig, err = base64.StdEncoding.DecodeString(jc.Sig); err != nil {
			return fmt.Errorf("checkpoint sig: %w", err)
		}
		r.Checkpoint = c
	}
	return nil
}

func hex32(s string, dst *[32]byte) error {
	if len(s) != 64 {
		return fmt.Errorf("%d hex digits, want 64", len(s))
	}
	_, err := hex.Decode(dst[:], []byte(s))
	return err
}
