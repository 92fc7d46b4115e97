package transport

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/hashicorp/raft"
	"github.com/mcpd/mcpd/cluster"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/queue"
	"github.com/mcpd/mcpd/snapshot"
)

// Snapshot backup and restore (docs/ops/snapshots.md):
//
//	GET  /v1/snapshot          a snapshot file (package snapshot's format)
//	POST /v1/snapshot/restore  body: a snapshot file; replaces the cluster's state (any node)
//
// Both stage the state database in a temporary file (TMPDIR) first, so
// the node needs free space there of about the size of state.db (twice
// that for a restore: the upload and its checked copy; on a follower,
// the upload and the body it checks, and the leader needs as much).
func (a *Admin) snapshotRoutes() {
	a.mux.HandleFunc("GET /v1/snapshot", a.snapshotSave)
	a.mux.HandleFunc("POST /v1/snapshot/restore", a.snapshotRestore)
	// Restores that followers send on over the Raft port run here too.
	a.node.SetRestoreHandler(a.forwardedRestore)
}

// maxSnapshotUpload bounds the body of a restore, on the node the
// operator sends it to and on the leader a follower sends it on to.
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
	// Leader is the node that restored it; Via the follower the file was
	// sent to, when it was not the leader.
	Leader string `json:"leader,omitempty"`
	Via    string `json:"via,omitempty"`
}

// snapshotRestore answers POST /v1/snapshot/restore: it stores the
// uploaded file, then the leader checks it completely and has Raft
// install it as the state of every node. On the leader that happens
// here; a follower checks the file first (a bad file is refused before
// anything moves), streams it to the leader over the Raft port and
// relays the leader's answer (restoreThroughLeader). A file that fails
// any check changes nothing.
func (a *Admin) snapshotRestore(w http.ResponseWriter, r *http.Request) {
	up, fail := receiveSnapshot(r.Body)
	if fail != nil {
		writeRestoreAnswer(w, *fail)
		return
	}
	defer os.Remove(up)
	if a.node.IsLeader() {
		writeRestoreAnswer(w, a.restoreOnLeader(r.Context(), Operator(r), "", up))
		return
	}
	writeRestoreAnswer(w, a.restoreThroughLeader(r.Context(), Operator(r), up))
}

// restoreAnswer builds the answer of a restore (the admin API's JSON).
func restoreAnswer(status int, v any) cluster.RestoreAnswer {
	body, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		status, body = http.StatusInternalServerError, []byte(`{"code":"internal","error":"encoding the answer failed"}`)
	}
	return cluster.RestoreAnswer{Status: status, Body: append(body, '\n')}
}

func restoreError(status int, code, format string, args ...any) cluster.RestoreAnswer {
	return restoreAnswer(status, AdminError{Code: code, Error: fmt.Sprintf(format, args...)})
}

// restoreFailure is the answer of an error from the node or the FSM, as
// adminFail answers it.
func restoreFailure(err error) cluster.RestoreAnswer {
	code, msg := errorCode(err)
	return restoreAnswer(failStatus(code), AdminError{Code: code, Error: msg})
}

func writeRestoreAnswer(w http.ResponseWriter, ans cluster.RestoreAnswer) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(ans.Status)
	_, _ = w.Write(ans.Body)
}

// receiveSnapshot stores an uploaded snapshot file in a temporary file,
// at most maxSnapshotUpload bytes, and returns its name (the caller
// removes it), or the answer that refuses it.
func receiveSnapshot(body io.Reader) (string, *cluster.RestoreAnswer) {
	up, err := os.CreateTemp("", "mcpd-restore-*.snap")
	if err != nil {
		ans := restoreFailure(err)
		return "", &ans
	}
	n, err := io.Copy(up, io.LimitReader(body, maxSnapshotUpload+1))
	if cerr := up.Close(); err == nil {
		err = cerr
	}
	var ans cluster.RestoreAnswer
	switch {
	case err != nil:
		ans = restoreError(http.StatusBadRequest, "bad_request", "reading the snapshot: %v", err)
	case n > maxSnapshotUpload:
		ans = restoreError(http.StatusRequestEntityTooLarge, "bad_request", "the snapshot is larger than %d bytes", int64(maxSnapshotUpload))
	default:
		return up.Name(), nil
	}
	os.Remove(up.Name())
	return "", &ans
}

// restoreThroughLeader is a follower's part of a restore: check the
// file as the leader will, then have the leader restore it and relay its
// answer.
func (a *Admin) restoreThroughLeader(ctx context.Context, actor, up string) cluster.RestoreAnswer {
	if _, err := snapshot.Check(up, "", a.auditPub(), ""); err != nil {
		return restoreError(http.StatusBadRequest, "bad_snapshot", "refused, nothing changed: %v", err)
	}
	if a.node.IsLeader() { // elected while it checked
		return a.restoreOnLeader(ctx, actor, "", up)
	}
	f, err := os.Open(up)
	if err != nil {
		return restoreFailure(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return restoreFailure(err)
	}
	a.log.Info("snapshot restore: the file checks; sending it to the leader", "operator", actor, "leader", a.node.Leader(), "bytes", fi.Size())
	ans, err := a.node.ForwardRestore(ctx, actor, f, fi.Size())
	switch {
	case errors.Is(err, cluster.ErrRestoreNeedsTLS):
		return restoreError(http.StatusConflict, "not_leader", "only the leader restores a snapshot, and this node cannot send it there (%v); the leader is %q: send the file to its admin API", err, a.node.Leader())
	case err != nil:
		a.log.Warn("snapshot restore through the leader failed", "operator", actor, "err", err)
		return restoreFailure(err)
	}
	return ans
}

// forwardedRestore is the leader's part of a restore a follower sends
// over the Raft port (the node's RestoreHandler).
func (a *Admin) forwardedRestore(ctx context.Context, req cluster.RestoreRequest, body io.Reader) cluster.RestoreAnswer {
	up, fail := receiveSnapshot(body)
	if fail != nil {
		return *fail
	}
	defer os.Remove(up)
	via := req.From
	if via == a.node.ID() {
		// The follower was elected while it sent the file on, to itself.
		via = ""
	}
	return a.restoreOnLeader(ctx, req.Actor, via, up)
}

// restoreOnLeader restores the snapshot file up, uploaded to this node
// (via "") or to the follower via, which sent it on. It checks the file
// completely, then has Raft install it as the state of every node. Every
// restore runs here.
func (a *Admin) restoreOnLeader(ctx context.Context, actor, via, up string) cluster.RestoreAnswer {
	compact := up + ".db"
	defer os.Remove(compact)
	res, err := snapshot.Check(up, "", a.auditPub(), compact)
	if err != nil {
		return restoreError(http.StatusBadRequest, "bad_snapshot", "refused, nothing changed: %v", err)
	}
	h := res.Header
	detail := fmt.Sprintf("saved by %s at %s", h.Node, h.Created.Format(time.RFC3339))
	if via != "" {
		detail += "; sent through " + via
	}
	mark := fsm.RestorePending{ID: rand.Text()[:16], Actor: actor,
		Subject: fmt.Sprintf("index %d audit %d %s; %s", h.Index, h.AuditHead.Seq, h.AuditHead.Hash, detail)}
	// The restored state carries the mark of its own audit entry, which
	// whichever node leads after the restore records (fsm/restorerec.go).
	// A cluster with a member of an older version records it the earlier
	// way: after the restore, by this node only. Either way the copy
	// keeps the cluster's level, which a restore does not lower.
	marked := a.node.MembersApply(fsm.TypeRestoreRecord) == nil
	level, err := a.node.ClusterLevel()
	if err != nil {
		return restoreFailure(err)
	}
	markOf := &mark
	if !marked {
		markOf = nil
	}
	if err := fsm.PrepareRestore(compact, markOf, level); err != nil {
		return restoreFailure(fmt.Errorf("%w: preparing the copy to restore: %v", errRestore, err))
	}
	f, err := os.Open(compact)
	if err != nil {
		return restoreFailure(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return restoreFailure(err)
	}
	retry := func(why string) cluster.RestoreAnswer {
		return restoreError(http.StatusServiceUnavailable, "unavailable", "%s; nothing was restored: send the file again (to any node)", why)
	}
	switch {
	case ctx.Err() != nil:
		// The operator (or the follower relaying) went away before it began.
		return retry("the request ended before the restore began")
	case !a.node.IsLeader():
		return retry(fmt.Sprintf("leadership moved to %q while the file was received and checked", a.node.Leader()))
	}
	// Raft installs a restore on the leader's own state first and only
	// then finds out whether a quorum still follows: a leader cut off
	// from its peers would take the file alone. So the leadership is
	// confirmed with a quorum right before.
	if err := a.node.Raft().VerifyLeader().Error(); err != nil {
		return retry(fmt.Sprintf("this node could not confirm its leadership with a quorum of the cluster (%v)", err))
	}
	a.log.Warn("restoring a snapshot: the cluster's state is replaced", "operator", actor, "via", via,
		"index", h.Index, "term", h.Term, "created", h.Created, "node", h.Node, "audit_seq", h.AuditHead.Seq)
	// Raft installs it above every index it has (and above h.Index),
	// restores its own FSM from it and sends it to the followers, which
	// restore it too. The FSM's applied index (h.Index) stays below the
	// new log position, so every entry after it is applied.
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Index: h.Index, Term: h.Term, Size: fi.Size()}
	if err := a.node.Raft().Restore(meta, f, 5*time.Minute); err != nil {
		switch {
		case errors.Is(err, raft.ErrNotLeader):
			// Refused before Raft took anything.
			return retry("leadership was lost just before the restore")
		case errors.Is(err, raft.ErrLeadershipLost) && marked:
			return restoreFailure(fmt.Errorf("%w: leadership was lost while the restore was committed: this node took the file, the cluster may not have; "+
				"if it did, its next leader records the snapshot.restore audit entry (subject %q): look for it, or send the file again "+
				"(the same file restored twice leaves the same state) (docs/ops/snapshots.md)", cluster.ErrUnknown, mark.Subject))
		case errors.Is(err, raft.ErrLeadershipLost):
			return restoreFailure(fmt.Errorf("%w: leadership was lost while the restore was committed: this node took the file, the cluster may not have, "+
				"and no snapshot.restore audit entry records it either way; send the file again (the same file restored twice leaves the same state, and is recorded) "+
				"or compare the cluster with it (docs/ops/snapshots.md)", cluster.ErrUnknown))
		}
		return restoreFailure(fmt.Errorf("%w: restore: %v", errRestore, err))
	}
	idx := a.node.Raft().LastIndex()
	// The restore's own audit entry, right after the restored head. It
	// is also the first command every node applies after the snapshot,
	// which moves their applied index past the restore's log position
	// (until then they count as catching up). It is recorded even when
	// the operator has gone away meanwhile.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	var rep *fsm.Reply
	if marked {
		rep, err = a.node.RecordRestore(ctx, &mark)
	} else {
		// The subject says it all: the command's body, Detail included,
		// is kept only as a digest.
		rep, err = a.node.Call(ctx, fsm.TypeAuthEvent, actor, &fsm.AuthEventArgs{
			Kind: "snapshot.restore", Agent: actor, Node: a.node.ID(), Subject: mark.Subject, Detail: detail})
	}
	if err == nil && rep.Err != nil {
		err = rep.Err
	}
	if marked && errors.Is(err, queue.ErrConflict) {
		err = nil // the leader's duty recorded it first
	}
	if err != nil {
		return restoreFailure(fmt.Errorf("restored at index %d, but recording it failed: %w", idx, err))
	}
	a.log.Warn("snapshot restored", "operator", actor, "via", via, "index", idx)
	return restoreAnswer(http.StatusOK, SnapshotRestoreResult{Restored: h, Index: idx, Leader: a.node.ID(), Via: via})
}

var errRestore = errors.New("snapshot restore failed")
