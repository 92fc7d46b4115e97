// Package snapshot is the file format of `mcpd snapshot save`: a header
// that describes a point-in-time copy of a node's state database, then the
// database itself. It also checks such a file completely (checksum,
// database pages, the header against the contents, the audit chain), so a
// damaged file is refused before anything is restored from it.
//
// Layout (docs/ops/snapshots.md):
//
//	offset 0   8 bytes  magic "MCPDSNAP"
//	offset 8   4 bytes  format version, big-endian (1)
//	offset 12  4 bytes  header length H, big-endian
//	offset 16  H bytes  header, JSON (Header)
//	offset 16+H         body: the state database (bbolt), Header.BodySize bytes
//
// Nothing follows the body. Header.BodySHA256 covers the body; the
// header's other fields are read back from the body when the file is
// checked, so a header that disagrees with its body is refused too.
package snapshot

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"time"

	"github.com/mcpd/mcpd/audit"
	bolt "go.etcd.io/bbolt"
)

// Magic opens every snapshot file.
const Magic = "MCPDSNAP"

// Version is the format version this package writes and reads.
const Version = 1

// prefixLen is the magic, the version and the header length.
const prefixLen = 16

// maxHeader bounds the header a reader accepts.
const maxHeader = 1 << 20

// Counts are the numbers of records of each kind in a snapshot.
type Counts struct {
	Queues    int `json:"queues"`
	Messages  int `json:"messages"`
	Leases    int `json:"leases"`
	Tasks     int `json:"tasks"`
	Agents    int `json:"agents"`
	Schedules int `json:"schedules"`
}

// Head is the audit chain's head as the header records it.
type Head struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"` // hex SHA-256
}

// Header describes a snapshot file's body.
type Header struct {
	// Index and Term are the Raft log position the state reflects (the
	// last entry applied to it).
	Index uint64 `json:"index"`
	Term  uint64 `json:"term"`
	// StateTime is the time of the last command applied (the cluster's
	// clock for leases and timers); Created the wall time of the save.
	StateTime time.Time `json:"state_time"`
	Created   time.Time `json:"created"`
	// Node is the node that wrote the copy; Leader the leader it knew.
	Node   string `json:"node"`
	Leader string `json:"leader,omitempty"`
	Counts Counts `json:"counts"`
	// AuditHead is the last audit entry in the body.
	AuditHead  Head   `json:"audit_head"`
	BodySize   int64  `json:"body_size"`
	BodySHA256 string `json:"body_sha256"`
}

// Buckets counted in Counts, and the state database's applied index.
// These names belong to the packages that own the buckets (queue, task,
// auth, schedule, fsm); the format reads them only to describe a body.
var (
	bucketQueues    = []byte("queues")
	bucketMsgs      = []byte("msgs")
	bucketByConn    = []byte("byconn")
	bucketTasks     = []byte("task.tasks")
	bucketAgents    = []byte("agents")
	bucketSchedules = []byte("sched.defs")
	bucketMeta      = []byte("meta")
	keyApplied      = []byte("applied") // index(8) term(8)
	keyNow          = []byte("now")     // unix ms
)

// Describe reads from a state database the header fields its contents
// determine: index, term, state time, counts and audit head.
func Describe(tx *bolt.Tx) (Header, error) {
	var h Header
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		return h, errors.New("not a state database: no meta bucket")
	}
	if v := meta.Get(keyApplied); len(v) >= 16 {
		h.Index = binary.BigEndian.Uint64(v[:8])
		h.Term = binary.BigEndian.Uint64(v[8:16])
	}
	if v := meta.Get(keyNow); len(v) == 8 {
		h.StateTime = time.UnixMilli(int64(binary.BigEndian.Uint64(v))).UTC()
	}
	count := func(name []byte) int {
		if b := tx.Bucket(name); b != nil {
			return b.Stats().KeyN
		}
		return 0
	}
	h.Counts = Counts{
		Queues:    count(bucketQueues),
		Messages:  count(bucketMsgs),
		Leases:    count(bucketByConn),
		Tasks:     count(bucketTasks),
		Agents:    count(bucketAgents),
		Schedules: count(bucketSchedules),
	}
	head, err := audit.ReadHead(tx)
	if err != nil {
		return h, fmt.Errorf("audit head: %w", err)
	}
	h.AuditHead = Head{Seq: head.Seq, Hash: hex.EncodeToString(head.Hash[:])}
	return h, nil
}

// WriteHeader writes the magic, the version and h.
func WriteHeader(w io.Writer, h *Header) error {
	js, err := json.Marshal(h)
	if err != nil {
		return err
	}
	var pre [prefixLen]byte
	copy(pre[:8], Magic)
	binary.BigEndian.PutUint32(pre[8:12], Version)
	binary.BigEndian.PutUint32(pre[12:16], uint32(len(js)))
	if _, err := w.Write(pre[:]); err != nil {
		return err
	}
	_, err = w.Write(js)
	return err
}

// HeaderLen is the number of bytes WriteHeader writes for h.
func HeaderLen(h *Header) int64 {
	js, _ := json.Marshal(h)
	return prefixLen + int64(len(js))
}

// ReadHeader reads the magic, the version and the header; r is then at
// the body.
func ReadHeader(r io.Reader) (*Header, int64, error) {
	var pre [prefixLen]byte
	if _, err := io.ReadFull(r, pre[:]); err != nil {
		return nil, 0, fmt.Errorf("not an mcpd snapshot: %w", truncated(err))
	}
	if !bytes.Equal(pre[:8], []byte(Magic)) {
		return nil, 0, errors.New("not an mcpd snapshot (bad magic)")
	}
	if v := binary.BigEndian.Uint32(pre[8:12]); v != Version {
		return nil, 0, fmt.Errorf("snapshot format version %d is not supported (this mcpd reads %d)", v, Version)
	}
	n := binary.BigEndian.Uint32(pre[12:16])
	if n == 0 || n > maxHeader {
		return nil, 0, fmt.Errorf("snapshot header length %d is out of range", n)
	}
	js := make([]byte, n)
	if _, err := io.ReadFull(r, js); err != nil {
		return nil, 0, fmt.Errorf("snapshot header: %w", truncated(err))
	}
	var h Header
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&h); err != nil {
		return nil, 0, fmt.Errorf("snapshot header: %v", err)
	}
	if h.BodySize <= 0 {
		return nil, 0, fmt.Errorf("snapshot header: body size %d", h.BodySize)
	}
	if s, err := hex.DecodeString(h.BodySHA256); err != nil || len(s) != sha256.Size {
		return nil, 0, fmt.Errorf("snapshot header: body_sha256 %q is not a SHA-256", h.BodySHA256)
	}
	return &h, prefixLen + int64(n), nil
}

func truncated(err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return errors.New("the file is truncated")
	}
	return err
}

// Result is what Check found.
type Result struct {
	Header *Header
	Audit  audit.Report
}

// Check verifies the snapshot file at path completely: the header, the
// length, the SHA-256 of the body, every page of the database, the header
// fields against the database, and the audit chain (pub, if not nil, is
// the cluster's audit key for its checkpoints). tmpDir receives temporary
// files. When compactTo is not "", a compacted copy of the body (the form
// a node restores) is written there; it is removed on any failure. Any
// problem is an error; a broken audit chain is also in Result.Audit.
func Check(path, tmpDir string, pub ed25519.PublicKey, compactTo string) (res *Result, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	h, off, err := ReadHeader(f)
	if err != nil {
		return nil, err
	}
	res = &Result{Header: h}
	if want := off + h.BodySize; fi.Size() != want {
		if fi.Size() < want {
			return res, fmt.Errorf("the file is truncated: %d of %d bytes", fi.Size(), want)
		}
		return res, fmt.Errorf("the file has %d bytes after the body", fi.Size()-want)
	}
	// The body goes to a file of its own: bbolt opens only whole files.
	body, err := os.CreateTemp(tmpDir, "mcpd-snapshot-body-*")
	if err != nil {
		return res, err
	}
	defer os.Remove(body.Name())
	sum := sha256.New()
	n, err := io.Copy(io.MultiWriter(body, sum), io.LimitReader(f, h.BodySize))
	if cerr := body.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return res, err
	}
	if n != h.BodySize {
		return res, fmt.Errorf("the file is truncated: body %d of %d bytes", n, h.BodySize)
	}
	if got := hex.EncodeToString(sum.Sum(nil)); got != h.BodySHA256 {
		return res, fmt.Errorf("checksum mismatch: the body's SHA-256 is %s, the header says %s", got, h.BodySHA256)
	}
	if err := checkBody(body.Name(), res, pub, compactTo); err != nil {
		return res, err
	}
	return res, nil
}

// checkBody opens the body read-only and checks it. bbolt panics on some
// damage and faults on a page past the end of a file; both become errors.
func checkBody(path string, res *Result, pub ed25519.PublicKey, compactTo string) (err error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return fmt.Errorf("the body is not a state database: %w", err)
	}
	defer db.Close()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("the body is damaged: %v", r)
		}
	}()
	err = db.View(func(tx *bolt.Tx) error {
		for cerr := range tx.Check() {
			return fmt.Errorf("the body is damaged: %v", cerr)
		}
		got, err := Describe(tx)
		if err != nil {
			return fmt.Errorf("the body: %w", err)
		}
		h := res.Header
		switch {
		case got.Index != h.Index || got.Term != h.Term:
			return fmt.Errorf("the header says index %d term %d, the body holds %d %d", h.Index, h.Term, got.Index, got.Term)
		case got.Counts != h.Counts:
			return fmt.Errorf("the header's counts %+v differ from the body's %+v", h.Counts, got.Counts)
		case got.AuditHead != h.AuditHead:
			return fmt.Errorf("the header's audit head %d %s differs from the body's %d %s", h.AuditHead.Seq, h.AuditHead.Hash, got.AuditHead.Seq, got.AuditHead.Hash)
		}
		rep, err := audit.Verify(tx, pub)
		if err != nil {
			return fmt.Errorf("the body's audit log: %w", err)
		}
		res.Audit = rep
		if !rep.OK {
			return fmt.Errorf("the audit chain does not verify: %s", rep)
		}
		return nil
	})
	if err != nil || compactTo == "" {
		return err
	}
	_ = os.Remove(compactTo)
	out, err := bolt.Open(compactTo, 0o600, &bolt.Options{Timeout: time.Second, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			_ = os.Remove(compactTo)
		}
	}()
	if err := bolt.Compact(out, db, 64<<20); err != nil {
		return fmt.Errorf("the body is damaged: %w", err)
	}
	return nil
}

// DescribeFile reads the header of the state database
// file at path (a consistent copy, not a live state.db): what Describe
// reads, its size and its SHA-256. The caller adds the node, the leader
// and the creation time.
func DescribeFile(path string) (Header, error) {
	f, err := os.Open(path)
	if err != nil {
		return Header{}, err
	}
	defer f.Close()
	sum := sha256.New()
	n, err := io.Copy(sum, f)
	if err != nil {
		return Header{}, err
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return Header{}, err
	}
	defer db.Close()
	var h Header
	err = db.View(func(tx *bolt.Tx) error {
		h, err = Describe(tx)
		return err
	})
	h.BodySize = n
	h.BodySHA256 = hex.EncodeToString(sum.Sum(nil))
	return h, err
}

// Write writes a snapshot file: h, then the body from the file at
// bodyPath, which must be what h describes.
func Write(w io.Writer, h *Header, bodyPath string) error {
	f, err := os.Open(bodyPath)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := WriteHeader(w, h); err != nil {
		return err
	}
	n, err := io.Copy(w, f)
	if err == nil && n != h.BodySize {
		err = fmt.Errorf("snapshot body changed while written: %d of %d bytes", n, h.BodySize)
	}
	return err
}
