package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc64"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/mcpd/mcpd/fsm"
	bolt "go.etcd.io/bbolt"
)

// Before a node opens its stores it checks them (see DESIGN.md,
// "Corruption"): the Raft log and stable store (raft.db) entry by entry
// against their CRC32C seals, each snapshot against raft's CRC64, and
// state.db against the SHA-256 of its last clean close. bbolt may panic
// or fault on a damaged page, so the check of raft.db runs in a child
// process when the binary provides one (RaftDBChecker).

// RaftDBCheck is the verdict on a raft.db file.
type RaftDBCheck struct {
	Path    string `json:"path"`
	Missing bool   `json:"missing,omitempty"`
	OK      bool   `json:"ok"`
	Problem string `json:"problem,omitempty"`
	First   uint64 `json:"first"`
	Last    uint64 `json:"last"`
	Term    uint64 `json:"term"`
	Sealed  bool   `json:"sealed"`
	Millis  int64  `json:"ms"`
}

// RaftDBChecker checks raft.db before the node opens it. The default runs
// CheckRaftDB in this process; the mcpd binary replaces it with
// ChildRaftDBChecker, so that a fault inside bbolt kills only the check.
var RaftDBChecker = CheckRaftDB

// CheckRaftDB opens raft.db read-only, runs bbolt's consistency check,
// and reads every log entry and stable value through their seals.
func CheckRaftDB(path string) (c RaftDBCheck) {
	start := time.Now()
	c.Path = path
	defer func() { c.Millis = time.Since(start).Milliseconds() }()
	fail := func(format string, args ...any) RaftDBCheck {
		c.OK, c.Problem = false, fmt.Sprintf(format, args...)
		return c
	}
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		c.Missing, c.OK = true, true
		return c
	}
	if err != nil {
		return fail("stat: %v", err)
	}
	if fi.Size() == 0 {
		return fail("file is empty")
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		return fail("bbolt open: %v", err)
	}
	var problems []string
	err = db.View(func(tx *bolt.Tx) error {
		// Pages past the end of a truncated file are not all read by
		// the check; the meta page says how far the file must reach.
		if tx.Size() > fi.Size() {
			problems = append(problems, fmt.Sprintf("file has %d bytes, its pages reach %d (truncated)", fi.Size(), tx.Size()))
			return nil
		}
		for err := range tx.Check() {
			if len(problems) < 3 {
				problems = append(problems, err.Error())
			}
		}
		return nil
	})
	db.Close()
	if err != nil {
		return fail("bbolt check: %v", err)
	}
	if len(problems) > 0 {
		return fail("bbolt check: %s", strings.Join(problems, "; "))
	}
	b, err := raftboltdb.New(raftboltdb.Options{Path: path, BoltOptions: &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second}})
	if err != nil {
		return fail("open: %v", err)
	}
	defer b.Close()
	s, _, err := newChecksumStore(b, true)
	if err != nil {
		return fail("%v", err)
	}
	c.Sealed = s.strict
	for _, k := range raftStableKeys {
		if _, err := s.Get(k); err != nil && err.Error() != raftboltdb.ErrKeyNotFound.Error() {
			return fail("%v", err)
		}
	}
	if term, err := s.GetUint64(raftStableKeys[0]); err == nil {
		c.Term = term
	}
	if c.First, err = s.FirstIndex(); err != nil {
		return fail("first index: %v", err)
	}
	if c.Last, err = s.LastIndex(); err != nil {
		return fail("last index: %v", err)
	}
	if c.Last > 0 && c.First == 0 {
		return fail("last index %d without a first", c.Last)
	}
	var l raft.Log
	for i := c.First; i != 0 && i <= c.Last; i++ {
		if err := s.GetLog(i, &l); err != nil {
			return fail("log entry %d of %d..%d: %v", i, c.First, c.Last, err)
		}
	}
	c.OK = true
	return c
}

// ChildRaftDBChecker returns a RaftDBChecker that runs exe with args and
// the path of raft.db appended. The child prints a RaftDBCheck as JSON; a
// child that dies without one (a panic, a fault on a damaged page) is a
// verdict too: raft.db is corrupt.
func ChildRaftDBChecker(exe string, args ...string) func(string) RaftDBCheck {
	return func(path string) RaftDBCheck {
		start := time.Now()
		cmd := exec.Command(exe, append(append([]string(nil), args...), path)...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		runErr := cmd.Run()
		var c RaftDBCheck
		if err := json.Unmarshal(stdout.Bytes(), &c); err == nil && c.Path != "" {
			return c
		}
		msg := strings.TrimSpace(stderr.String())
		if i := strings.IndexByte(msg, '\n'); i >= 0 {
			msg = msg[:i] // the panic or fault line, not the stack
		}
		return RaftDBCheck{
			Path:    path,
			Problem: fmt.Sprintf("integrity check crashed reading raft.db (%v): %s", runErr, msg),
			Millis:  time.Since(start).Milliseconds(),
		}
	}
}

// SnapshotCheck is the verdict on one snapshot directory.
type SnapshotCheck struct {
	ID      string `json:"id"`
	Index   uint64 `json:"index"`
	Term    uint64 `json:"term"`
	OK      bool   `json:"ok"`
	Problem string `json:"problem,omitempty"`
}

// CheckSnapshots verifies every snapshot under dir (raft's snapshots
// directory), newest first. raft.FileSnapshotStore keeps a CRC64 of
// state.bin in meta.json but checks it only when it opens the snapshot
// for a restore; here it is checked at every start, together with the
// size and the index and term that the directory name repeats.
func CheckSnapshots(dir string) ([]SnapshotCheck, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []SnapshotCheck
	for _, e := range ents {
		if !e.IsDir() || strings.HasSuffix(e.Name(), ".tmp") {
			continue
		}
		out = append(out, checkSnapshot(filepath.Join(dir, e.Name())))
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Term != out[j].Term {
			return out[i].Term > out[j].Term
		}
		if out[i].Index != out[j].Index {
			return out[i].Index > out[j].Index
		}
		return out[i].ID > out[j].ID
	})
	return out, nil
}

func checkSnapshot(dir string) SnapshotCheck {
	c := SnapshotCheck{ID: filepath.Base(dir)}
	// raft names a snapshot term-index-millis.
	parts := strings.Split(c.ID, "-")
	if len(parts) >= 2 {
		c.Term, _ = strconv.ParseUint(parts[0], 10, 64)
		c.Index, _ = strconv.ParseUint(parts[1], 10, 64)
	}
	fail := func(format string, args ...any) SnapshotCheck {
		c.OK, c.Problem = false, fmt.Sprintf(format, args...)
		return c
	}
	raw, err := os.ReadFile(filepath.Join(dir, "meta.json"))
	if err != nil {
		return fail("meta.json: %v", err)
	}
	var meta struct {
		raft.SnapshotMeta
		CRC []byte
	}
	if err := json.Unmarshal(raw, &meta); err != nil {
		return fail("meta.json: %v", err)
	}
	if meta.ID != c.ID || meta.Index != c.Index || meta.Term != c.Term {
		return fail("meta.json names snapshot %s at index %d term %d, its directory %s", meta.ID, meta.Index, meta.Term, c.ID)
	}
	fh, err := os.Open(filepath.Join(dir, "state.bin"))
	if err != nil {
		return fail("state.bin: %v", err)
	}
	defer fh.Close()
	h := crc64.New(crc64.MakeTable(crc64.ECMA))
	n, err := io.Copy(h, fh)
	if err != nil {
		return fail("state.bin: %v", err)
	}
	if n != meta.Size {
		return fail("state.bin has %d bytes, meta.json says %d", n, meta.Size)
	}
	if !bytes.Equal(h.Sum(nil), meta.CRC) {
		return fail("state.bin CRC64 %x, meta.json says %x", h.Sum(nil), meta.CRC)
	}
	c.OK = true
	return c
}

// Report is what a check of a data directory found (mcpd check).
type Report struct {
	DataDir   string          `json:"data_dir"`
	OK        bool            `json:"ok"`
	Raft      RaftDBCheck     `json:"raft"`
	Snapshots []SnapshotCheck `json:"snapshots"`
	State     string          `json:"state"`
	StateNote string          `json:"state_note,omitempty"`
	Coverage  string          `json:"coverage,omitempty"` // a gap between the newest good snapshot and the log
	Rejoining bool            `json:"rejoining,omitempty"`
}

// Paths inside a data directory.
func raftDir(dataDir string) string       { return filepath.Join(dataDir, "raft") }
func raftDBPath(dataDir string) string    { return filepath.Join(dataDir, "raft", "raft.db") }
func snapshotsDir(dataDir string) string  { return filepath.Join(dataDir, "raft", "snapshots") }
func statePath(dataDir string) string     { return filepath.Join(dataDir, "state.db") }
func rejoinMarker(dataDir string) string  { return filepath.Join(dataDir, "rejoin-pending") }
func corruptDirName(t time.Time) string   { return "corrupt-" + t.UTC().Format("20060102T150405.000Z") }
func fileExists(path string) bool         { _, err := os.Stat(path); return err == nil }
func stateNote(v fsm.StateVerdict) string { return v.String() }

// CheckDataDir checks every store of a data directory without changing
// anything; check runs the raft.db part.
func CheckDataDir(dataDir string, check func(string) RaftDBCheck) (Report, error) {
	r := Report{DataDir: dataDir}
	r.Raft = check(raftDBPath(dataDir))
	var err error
	if r.Snapshots, err = CheckSnapshots(snapshotsDir(dataDir)); err != nil {
		return r, err
	}
	v, note, err := fsm.CheckState(statePath(dataDir))
	if err != nil {
		return r, err
	}
	r.State, r.StateNote = stateNote(v), note
	r.Coverage = coverageGap(r.Raft, r.Snapshots)
	r.Rejoining = fileExists(rejoinMarker(dataDir))
	r.OK = r.Raft.OK && r.Coverage == "" && v != fsm.StateCorrupt
	for _, s := range r.Snapshots {
		r.OK = r.OK && s.OK
	}
	return r, nil
}

// coverageGap describes a hole between the newest good snapshot and the
// first log entry: raft would restore the snapshot and then find the
// entries after it missing.
func coverageGap(rc RaftDBCheck, snaps []SnapshotCheck) string {
	if !rc.OK || rc.Missing || rc.Last == 0 {
		return ""
	}
	var newest uint64
	for _, s := range snaps {
		if s.OK {
			newest = s.Index
			break
		}
	}
	if rc.First > newest+1 {
		if newest == 0 {
			return fmt.Sprintf("the log starts at index %d and no good snapshot precedes it", rc.First)
		}
		return fmt.Sprintf("the log starts at index %d but the newest good snapshot ends at %d", rc.First, newest)
	}
	return ""
}
