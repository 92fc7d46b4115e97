package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

func openTestStore(t *testing.T, path string) *checksumStore {
	t.Helper()
	b, err := raftboltdb.New(raftboltdb.Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	s, _, err := newChecksumStore(b, false)
	if err != nil {
		b.Close()
		t.Fatal(err)
	}
	return s
}

func testLogs(from, to uint64) []*raft.Log {
	var logs []*raft.Log
	for i := from; i <= to; i++ {
		logs = append(logs, &raft.Log{Index: i, Term: 3, Type: raft.LogCommand, Data: []byte(fmt.Sprintf("payload-%04d-abcdefgh", i))})
	}
	return logs
}

// flipIn flips one bit of the first occurrence of marker in the file.
func flipIn(t *testing.T, path string, marker []byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, marker)
	if i < 0 {
		t.Fatalf("%q not found in %s", marker, path)
	}
	b[i+len(marker)-1] ^= 0x01
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func Test_ChecksumStore_RoundTripKeepsExtensions(t *testing.T) {
	s := openTestStore(t, filepath.Join(t.TempDir(), "raft.db"))
	defer s.Close()
	logs := testLogs(1, 5)
	logs[2].Extensions = []byte("middleware")
	if err := s.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
	if string(logs[2].Extensions) != "middleware" || logs[0].Extensions != nil {
		t.Fatalf("StoreLogs changed the caller's entries: %q %q", logs[2].Extensions, logs[0].Extensions)
	}
	for _, want := range logs {
		var got raft.Log
		if err := s.GetLog(want.Index, &got); err != nil {
			t.Fatal(err)
		}
		if got.Index != want.Index || got.Term != want.Term || !bytes.Equal(got.Data, want.Data) || !bytes.Equal(got.Extensions, want.Extensions) {
			t.Fatalf("entry %d came back as %+v", want.Index, got)
		}
	}
	if err := s.SetUint64([]byte("CurrentTerm"), 7); err != nil {
		t.Fatal(err)
	}
	if v, err := s.GetUint64([]byte("CurrentTerm")); err != nil || v != 7 {
		t.Fatalf("GetUint64 = %d, %v", v, err)
	}
	// raft compares the text of the not-found error.
	if _, err := s.Get([]byte("LastVoteCand")); err == nil || err.Error() != "not found" {
		t.Fatalf("missing key: %v", err)
	}
}

func Test_ChecksumStore_FlippedByteInEntryIsCorrupt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft.db")
	s := openTestStore(t, path)
	if err := s.StoreLogs(testLogs(1, 20)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if c := CheckRaftDB(path); !c.OK || c.First != 1 || c.Last != 20 || !c.Sealed {
		t.Fatalf("check of a good store: %+v", c)
	}

	flipIn(t, path, []byte("payload-0011-abcd"))
	s = openTestStore(t, path)
	var l raft.Log
	if err := s.GetLog(10, &l); err != nil {
		t.Fatalf("entry 10 is intact: %v", err)
	}
	err := s.GetLog(11, &l)
	s.Close()
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("GetLog of a flipped entry: %v, want ErrCorrupt", err)
	}
	c := CheckRaftDB(path)
	if c.OK || !strings.Contains(c.Problem, "log entry 11") {
		t.Fatalf("check after the flip: %+v", c)
	}
}

func Test_ChecksumStore_FlippedStableValueIsCorrupt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft.db")
	s := openTestStore(t, path)
	if err := s.Set([]byte("LastVoteCand"), []byte("127.0.0.9:4438")); err != nil {
		t.Fatal(err)
	}
	s.Close()
	flipIn(t, path, []byte("127.0.0.9"))
	s = openTestStore(t, path)
	_, err := s.Get([]byte("LastVoteCand"))
	s.Close()
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Get of a flipped value: %v, want ErrCorrupt", err)
	}
	if c := CheckRaftDB(path); c.OK || !strings.Contains(c.Problem, "LastVoteCand") {
		t.Fatalf("check passed a flipped vote: %+v", c)
	}
}

func Test_ChecksumStore_SealsAStoreWrittenBeforeChecksums(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft.db")
	b, err := raftboltdb.New(raftboltdb.Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.StoreLogs(testLogs(1, 3000)); err != nil {
		t.Fatal(err)
	}
	if err := b.SetUint64([]byte("CurrentTerm"), 4); err != nil {
		t.Fatal(err)
	}
	b.Close()
	if c := CheckRaftDB(path); !c.OK || c.Sealed {
		t.Fatalf("check of an unsealed store: %+v", c)
	}
	b, err = raftboltdb.New(raftboltdb.Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	s, sealedNow, err := newChecksumStore(b, false)
	if err != nil || !sealedNow {
		t.Fatalf("sealing: %v, sealed now %v", err, sealedNow)
	}
	var l raft.Log
	if err := s.GetLog(2999, &l); err != nil || string(l.Data) != "payload-2999-abcdefgh" || l.Extensions != nil {
		t.Fatalf("after sealing: %+v %v", l, err)
	}
	if v, err := s.GetUint64([]byte("CurrentTerm")); err != nil || v != 4 {
		t.Fatalf("term after sealing: %d %v", v, err)
	}
	s.Close()
	if c := CheckRaftDB(path); !c.OK || !c.Sealed || c.Term != 4 {
		t.Fatalf("check after sealing: %+v", c)
	}
	// Sealed, an entry without a checksum is damage, not history.
	b, _ = raftboltdb.New(raftboltdb.Options{Path: path})
	if err := b.StoreLogs(testLogs(3001, 3001)); err != nil {
		t.Fatal(err)
	}
	b.Close()
	if c := CheckRaftDB(path); c.OK || !strings.Contains(c.Problem, "no checksum") {
		t.Fatalf("check of an unsealed entry in a sealed store: %+v", c)
	}
}

func Test_CheckRaftDB_TruncatedOrEmptyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft.db")
	s := openTestStore(t, path)
	if err := s.StoreLogs(testLogs(1, 2000)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	fi, _ := os.Stat(path)
	// Cut within the first pages (meta and root): bbolt refuses to open
	// the file or its check fails, and nothing faults.
	if err := os.Truncate(path, 4096+100); err != nil {
		t.Fatal(err)
	}
	if c := CheckRaftDB(path); c.OK {
		t.Fatalf("check of a file truncated from %d bytes passed: %+v", fi.Size(), c)
	}
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	if c := CheckRaftDB(path); c.OK || c.Problem != "file is empty" {
		t.Fatalf("check of an empty file: %+v", c)
	}
	if c := CheckRaftDB(filepath.Join(t.TempDir(), "none.db")); !c.OK || !c.Missing {
		t.Fatalf("check of a missing file: %+v", c)
	}
}
