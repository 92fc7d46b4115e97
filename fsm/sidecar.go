package fsm

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/mcpd/mcpd/internal/durable"
)

// state.db is trusted at open only when it is byte for byte the file a
// clean Close left: Close writes, after the last commit and the close of
// the database, a sidecar with the file's size and SHA-256, and open
// removes the sidecar (durably) before anything writes to the file. A
// file without a sidecar was not closed cleanly (a crash, a kill), and a
// file that does not match its sidecar was damaged at rest; the cluster
// layer then discards it and rebuilds the state from the Raft snapshot
// and log, which carry their own checksums. See DESIGN.md.

// StateVerdict is what CheckState found.
type StateVerdict int

const (
	// StateAbsent: there is no state.db.
	StateAbsent StateVerdict = iota
	// StateClean: state.db matches the sidecar of its last clean close.
	StateClean
	// StateUnclean: state.db has no sidecar; it was not closed cleanly.
	StateUnclean
	// StateCorrupt: state.db does not match its sidecar.
	StateCorrupt
)

func (v StateVerdict) String() string {
	switch v {
	case StateAbsent:
		return "absent"
	case StateClean:
		return "clean"
	case StateUnclean:
		return "not closed cleanly"
	case StateCorrupt:
		return "corrupt"
	}
	return "unknown"
}

// SidecarPath is where the checksum of a cleanly closed state.db at path
// is kept.
func SidecarPath(path string) string { return path + ".sha256" }

// CheckState says whether the state.db at path can be trusted, with a
// description of what did not match. It only reads files; it never
// opens the database.
func CheckState(path string) (StateVerdict, string, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return StateAbsent, "", nil
	}
	if err != nil {
		return 0, "", err
	}
	raw, err := os.ReadFile(SidecarPath(path))
	if errors.Is(err, os.ErrNotExist) {
		return StateUnclean, "no checksum sidecar", nil
	}
	if err != nil {
		return 0, "", err
	}
	wantSize, wantSum, ok := parseSidecar(raw)
	if !ok {
		return StateCorrupt, "checksum sidecar is unreadable", nil
	}
	if fi.Size() != wantSize {
		return StateCorrupt, fmt.Sprintf("size %d, %d at its clean close", fi.Size(), wantSize), nil
	}
	sum, _, err := fileSHA256(path)
	if err != nil {
		return 0, "", err
	}
	if !bytes.Equal(sum, wantSum) {
		return StateCorrupt, fmt.Sprintf("sha256 %x, %x at its clean close", sum[:8], wantSum[:8]), nil
	}
	return StateClean, "", nil
}

// sidecar format: "sha256 <hex> <size>\n".
func parseSidecar(raw []byte) (size int64, sum []byte, ok bool) {
	f := bytes.Fields(raw)
	if len(f) != 3 || string(f[0]) != "sha256" {
		return 0, nil, false
	}
	sum, err := hex.DecodeString(string(f[1]))
	if err != nil || len(sum) != sha256.Size {
		return 0, nil, false
	}
	size, err = strconv.ParseInt(string(f[2]), 10, 64)
	if err != nil {
		return 0, nil, false
	}
	return size, sum, true
}

func fileSHA256(path string) ([]byte, int64, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer fh.Close()
	h := sha256.New()
	n, err := io.Copy(h, fh)
	if err != nil {
		return nil, 0, err
	}
	return h.Sum(nil), n, nil
}

// writeSidecar records the checksum of the closed file at path: written
// to a temporary file, synced, renamed, and the directory synced.
func writeSidecar(path string) error {
	sum, size, err := fileSHA256(path)
	if err != nil {
		return err
	}
	side := SidecarPath(path)
	tmp := side + ".tmp"
	fh, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(fh, "sha256 %x %d\n", sum, size)
	if err == nil {
		err = fh.Sync()
	}
	if cerr := fh.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, side)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", side, err)
	}
	return durable.SyncDir(filepath.Dir(path))
}

// removeSidecar invalidates the clean-close record of path before the
// file is written again; the removal is durable when it returns.
func removeSidecar(path string) error {
	return durable.Remove(SidecarPath(path))
}
