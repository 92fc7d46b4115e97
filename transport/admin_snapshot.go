package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/hashicorp/raft"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/snapshot"
)

// Snapshot backup and restore (docs/ops/snapshots.md):
//
//	GET  /v1/snapshot          a snapshot file (package snapshot's format)
//	POST /v1/snapshot/restore  body: a snapshot file; replaces the cluster's state
//
// Both stage the state database in a temporary file (TMPDIR) first, so
// the node needs free space there of about the size of state.db (twice
// that for a restore: the upload and its checked copy).
func (a *Admin) snapshotRoutes() {
	a.mux.HandleFunc("GET /v1/snapshot", a.snapshotSave)
	a.mux.HandleFunc("POST /v1/snapshot/restore", a.snapshotRestore)
}

// maxSnapshotUpload bounds the body of a restore.
const maxSnapshotUpload = 64 << 30

// snapshotSave answers GET /v1/snapshot. The copy is consistent: it is
// one read transaction of state.db, taken while applies go on. It is not
// stale: first a command is committed and applied on this node (the
// audit entry "snapshot.save", which records who took it), so the copy
// holds every command acknowledged before the request.
func (a *Admin) snapshotSave(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	rep, err := a.node.Call(ctx, fsm.TypeAuthEvent, Operator(r), &fsm.AuthEventArgs{
		Kind: "snapshot.save", Agent: Operator(r), Node: a.node.ID(),
	})
	if err == nil && rep.Err != nil {
		err = rep.Err
	}
	if err != nil {
		adminFail(w, err)
		return
	}
	snap, err := a.node.FSM().Snapshot()
	if err != nil {
		adminFail(w, err)
		return
	}
	body, err := os.CreateTemp("", "mcpd-snapshot-*.db")
	if err != nil {
		snap.Release()
		adminFail(w, err)
		return
	}
	defer os.Remove(body.Name())
	err = snap.Persist(&fileSink{File: body})
	snap.Release()
	if err != nil {
		adminFail(w, fmt.Errorf("snapshot: %w", err))
		return
	}
	h, err := snapshot.DescribeFile(body.Name())
	if err != nil {
		adminFail(w, fmt.Errorf("snapshot: %w", err))
		return
	}
	h.Node, h.Leader, h.Created = a.node.ID(), a.node.Leader(), time.Now().UTC().Truncate(time.Millisecond)
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(snapshot.HeaderLen(&h)+h.BodySize, 10))
	w.WriteHeader(http.StatusOK)
	if err := snapshot.Write(w, &h, body.Name()); err != nil {
		// The client sees a short body and refuses it.
		a.log.Warn("snapshot save: sending failed", "err", err)
		return
	}
	a.log.Info("snapshot saved", "operator", Operator(r), "index", h.Index, "bytes", h.BodySize, "audit_seq", h.AuditHead.Seq)
}

// fileSink is the raft.SnapshotSink the FSM's Persist writes to.
type fileSink struct {
	*os.File
	cancelled bool
}

func (s *fileSink) ID() string    { return "admin" }
func (s *fileSink) Cancel() error { s.cancelled = true; return s.File.Close() }
func (s *fileSink) Close() error {
	if s.cancelled {
		return errors.New("cancelled")
	}
	if err := s.File.Sync(); err != nil {
		s.File.Close()
		return err
	}
	return s.File.Close()
}

// SnapshotRestoreResult answers POST /v1/snapshot/restore.
type SnapshotRestoreResult struct {
	Restored *snapshot.Header `json:"restored"`
	// Index is the Raft index the restored state now has in the
	// cluster's log (above every index before the restore).
	Index uint64 `json:"index"`
}

// snapshotRestore answers POST /v1/snapshot/restore: it checks the
// uploaded file completely, then has Raft install it as the state of
// every node. Only the leader can do that; other nodes answer
// not_leader with the leader's id. A file that fails any check changes
// nothing.
func (a *Admin) snapshotRestore(w http.ResponseWriter, r *http.Request) {
	if !a.node.IsLeader() {
		adminErr(w, http.StatusConflict, "not_leader", "only the leader restores a snapshot; the leader is %q: send the file to its admin API", a.node.Leader())
		return
	}
	up, err := os.CreateTemp("", "mcpd-restore-*.snap")
	if err != nil {
		adminFail(w, err)
		return
	}
	defer os.Remove(up.Name())
	n, err := io.Copy(up, io.LimitReader(r.Body, maxSnapshotUpload+1))
	if cerr := up.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		adminErr(w, http.StatusBadRequest, "bad_request", "reading the snapshot: %v", err)
		return
	}
	if n > maxSnapshotUpload {
		adminErr(w, http.StatusRequestEntityTooLarge, "bad_request", "the snapshot is larger than %d bytes", int64(maxSnapshotUpload))
		return
	}
	compact := up.Name() + ".db"
	defer os.Remove(compact)
	res, err := snapshot.Check(up.Name(), "", a.auditPub(), compact)
	if err != nil {
		adminErr(w, http.StatusBadRequest, "bad_snapshot", "refused, nothing changed: %v", err)
		return
	}
	f, err := os.Open(compact)
	if err != nil {
		adminFail(w, err)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		adminFail(w, err)
		return
	}
	h := res.Header
	a.log.Warn("restoring a snapshot: the cluster's state is replaced", "operator", Operator(r),
		"index", h.Index, "term", h.Term, "created", h.Created, "node", h.Node, "audit_seq", h.AuditHead.Seq)
	// Raft installs it above every index it has (and above h.Index),
	// restores its own FSM from it and sends it to the followers, which
	// restore it too. The FSM's applied index (h.Index) stays below the
	// new log position, so every entry after it is applied.
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Index: h.Index, Term: h.Term, Size: fi.Size()}
	if err := a.node.Raft().Restore(meta, f, 5*time.Minute); err != nil {
		adminFail(w, fmt.Errorf("%w: restore: %v", errRestore, err))
		return
	}
	idx := a.node.Raft().LastIndex()
	// The restore's own audit entry, right after the restored head. It
	// is also the first command every node applies after the snapshot,
	// which moves their applied index past the restore's log position
	// (until then they count as catching up).
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	rep, err := a.node.Call(ctx, fsm.TypeAuthEvent, Operator(r), &fsm.AuthEventArgs{
		Kind: "snapshot.restore", Agent: Operator(r), Node: a.node.ID(),
		Subject: fmt.Sprintf("index %d audit %d %s", h.Index, h.AuditHead.Seq, h.AuditHead.Hash),
		Detail:  fmt.Sprintf("saved by %s at %s", h.Node, h.Created.Format(time.RFC3339)),
	})
	if err == nil && rep.Err != nil {
		err = rep.Err
	}
	if err != nil {
		adminFail(w, fmt.Errorf("restored at index %d, but recording it failed: %w", idx, err))
		return
	}
	a.log.Warn("snapshot restored", "operator", Operator(r), "index", idx)
	adminJSON(w, http.StatusOK, SnapshotRestoreResult{Restored: h, Index: idx})
}

var errRestore = errors.New("snapshot restore failed")
