package snapshot

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mcpd/mcpd/audit"
	bolt "go.etcd.io/bbolt"
)

// makeBody writes a small state database: an applied index, a queue with
// messages, a lease, an agent, and an audit chain of n entries.
func makeBody(t *testing.T, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		meta, _ := tx.CreateBucket(bucketMeta)
		var idx [16]byte
		binary.BigEndian.PutUint64(idx[:8], 1234)
		binary.BigEndian.PutUint64(idx[8:], 7)
		meta.Put(keyApplied, idx[:])
		var now [8]byte
		binary.BigEndian.PutUint64(now[:], 1_700_000_000_000)
		meta.Put(keyNow, now[:])
		q, _ := tx.CreateBucket(bucketQueues)
		q.Put([]byte("jobs"), []byte("rec"))
		m, _ := tx.CreateBucket(bucketMsgs)
		for i := 0; i < 50; i++ {
			m.Put([]byte{byte(i)}, bytes.Repeat([]byte{'m'}, 200))
		}
		l, _ := tx.CreateBucket(bucketByConn)
		l.Put([]byte("c1\x00jobs\x00\x01"), nil)
		a, _ := tx.CreateBucket(bucketAgents)
		a.Put([]byte("cipher"), []byte("{}"))
		if err := audit.CreateBuckets(tx); err != nil {
			return err
		}
		for i := 0; i < n; i++ {
			if _, err := audit.Append(tx, audit.Event{Time: int64(i), Kind: "enqueue", Subject: "jobs", Outcome: "ok", Details: []byte{byte(i)}}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// writeFile makes a snapshot file of the body at body.
func writeFile(t *testing.T, body string) string {
	t.Helper()
	h, err := DescribeFile(body)
	if err != nil {
		t.Fatal(err)
	}
	h.Node, h.Leader = "n1", "n1"
	out := filepath.Join(t.TempDir(), "s.snap")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := Write(f, &h, body); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestRoundTrip(t *testing.T) {
	file := writeFile(t, makeBody(t, 20))
	compact := filepath.Join(t.TempDir(), "compact.db")
	res, err := Check(file, t.TempDir(), nil, compact)
	if err != nil {
		t.Fatal(err)
	}
	h := res.Header
	want := Counts{Queues: 1, Messages: 50, Leases: 1, Agents: 1}
	if h.Index != 1234 || h.Term != 7 || h.Counts != want || h.AuditHead.Seq != 20 || h.Node != "n1" {
		t.Fatalf("header %+v", h)
	}
	if !res.Audit.OK || res.Audit.Entries != 20 {
		t.Fatalf("audit %v", res.Audit)
	}
	// The compacted copy holds the same state.
	db, err := bolt.Open(compact, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		got, err := Describe(tx)
		if err != nil {
			return err
		}
		if got.Index != h.Index || got.Counts != h.Counts || got.AuditHead != h.AuditHead {
			t.Errorf("compacted copy: %+v, want %+v", got, h)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// refused checks that Check fails on file with an error containing want,
// and leaves no compacted copy.
func refused(t *testing.T, file, want string) {
	t.Helper()
	compact := filepath.Join(t.TempDir(), "compact.db")
	_, err := Check(file, t.TempDir(), nil, compact)
	if err == nil {
		t.Fatalf("accepted; want an error with %q", want)
	}
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q; want %q", err, want)
	}
	if _, serr := os.Stat(compact); serr == nil {
		t.Fatalf("a compacted copy was left after %v", err)
	}
}

func TestCorruptByteRefused(t *testing.T) {
	file := writeFile(t, makeBody(t, 20))
	orig, _ := os.ReadFile(file)
	_, off, err := ReadHeader(bytes.NewReader(orig))
	if err != nil {
		t.Fatal(err)
	}
	// A flipped byte anywhere in the body fails the checksum.
	for _, at := range []int64{off, off + 100, off + 4096, int64(len(orig)) - 1} {
		b := bytes.Clone(orig)
		b[at] ^= 0x40
		bad := filepath.Join(t.TempDir(), "bad.snap")
		os.WriteFile(bad, b, 0o600)
		refused(t, bad, "checksum mismatch")
	}
	// Bad magic and an unknown version.
	b := bytes.Clone(orig)
	b[0] = 'X'
	bad := filepath.Join(t.TempDir(), "magic.snap")
	os.WriteFile(bad, b, 0o600)
	refused(t, bad, "bad magic")
	b = bytes.Clone(orig)
	b[11] = 9
	os.WriteFile(bad, b, 0o600)
	refused(t, bad, "version 9")
}

func TestTruncationRefused(t *testing.T) {
	file := writeFile(t, makeBody(t, 20))
	orig, _ := os.ReadFile(file)
	for _, n := range []int{0, 5, 16, 40, len(orig) / 2, len(orig) - 1} {
		bad := filepath.Join(t.TempDir(), "short.snap")
		os.WriteFile(bad, orig[:n], 0o600)
		refused(t, bad, "truncated")
	}
	bad := filepath.Join(t.TempDir(), "long.snap")
	os.WriteFile(bad, append(bytes.Clone(orig), 0), 0o600)
	refused(t, bad, "after the body")
}

// A header rewritten to disagree with its body (checksum intact) is
// refused: the fields are read back from the body.
func TestHeaderMustMatchBody(t *testing.T) {
	body := makeBody(t, 20)
	for name, edit := range map[string]func(h *Header){
		"index":  func(h *Header) { h.Index++ },
		"counts": func(h *Header) { h.Counts.Messages-- },
		"audit":  func(h *Header) { h.AuditHead.Seq = 3 },
	} {
		h, err := DescribeFile(body)
		if err != nil {
			t.Fatal(err)
		}
		edit(&h)
		var buf bytes.Buffer
		if err := WriteHeader(&buf, &h); err != nil {
			t.Fatal(err)
		}
		raw, _ := os.ReadFile(body)
		buf.Write(raw)
		bad := filepath.Join(t.TempDir(), name+".snap")
		os.WriteFile(bad, buf.Bytes(), 0o600)
		refused(t, bad, "the header")
	}
}

// A body whose audit chain was rewritten (with a fresh checksum, as an
// attacker would write it) is refused.
func TestBrokenAuditChainRefused(t *testing.T) {
	body := makeBody(t, 20)
	db, err := bolt.Open(body, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("audit"))
		k, v := b.Cursor().First()
		v = bytes.Clone(v)
		v[10] ^= 1
		return b.Put(k, v)
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	file := writeFile(t, body)
	refused(t, file, "audit chain does not verify")
}

func TestHeaderJSON(t *testing.T) {
	file := writeFile(t, makeBody(t, 3))
	f, _ := os.Open(file)
	defer f.Close()
	h, off, err := ReadHeader(f)
	if err != nil {
		t.Fatal(err)
	}
	if off != HeaderLen(h) {
		t.Fatalf("body at %d, HeaderLen %d", off, HeaderLen(h))
	}
	js, _ := json.Marshal(h)
	for _, k := range []string{`"index":1234`, `"term":7`, `"node":"n1"`, `"messages":50`, `"audit_head":{"seq":3`, `"body_sha256":"`} {
		if !bytes.Contains(js, []byte(k)) {
			t.Errorf("header %s lacks %s", js, k)
		}
	}
}
