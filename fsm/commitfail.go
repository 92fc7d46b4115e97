package fsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
)

// A failed commit of the pending write transaction (a full disk, an I/O
// error) does not stop the process. bbolt rolls the transaction back, so
// state.db is behind the applied index: the entries in between were
// applied in memory and their effects delivered, but they are durable only
// in the Raft log. The FSM then:
//
//   - records the failure (one ERROR line) and reports it through Degraded,
//     which keeps the node out of /readyz;
//   - applies nothing more: ApplyBatch waits until a commit succeeds (or
//     the FSM stops), so no entry can be applied on top of the older state;
//   - retries from the flusher with backoff: close and reopen state.db,
//     read the applied index it holds, re-apply the entries after it up to
//     the in-memory applied index from the Raft log (LogSource), discarding
//     their effects and replies, which were delivered the first time, and
//     commit. The first success clears the failure (one INFO line).
//
// Re-applying is deterministic: the same entries on the same stored state
// at the same entry times give the same state as the first apply.

// LogSource reads committed entries back from the Raft log.
type LogSource interface {
	GetLog(index uint64, log *raft.Log) error
}

// SetLogSource gives the FSM the Raft log store to re-apply entries from
// after a failed commit. Call it before Raft starts.
func (f *FSM) SetLogSource(s LogSource) { f.logs.Store(&s) }

// SetLogger sets where the FSM reports commit failures and recoveries.
func (f *FSM) SetLogger(l *slog.Logger) { f.logger.Store(l) }

func (f *FSM) log() *slog.Logger {
	if l := f.logger.Load(); l != nil {
		return l
	}
	return slog.Default()
}

// CommitFailed returns a channel that is closed once a commit of state.db
// fails (closed already while a failure is unresolved; Degraded says
// why). After a recovery it returns a new one: read it again.
func (f *FSM) CommitFailed() <-chan struct{} { return *f.failedCh.Load() }

func (f *FSM) renewFailedCh() {
	ch := make(chan struct{})
	f.failedCh.Store(&ch)
}

// Degraded returns why state.db cannot currently commit, or "" when it can.
func (f *FSM) Degraded() string {
	if r := f.reason.Load(); r != nil {
		return *r
	}
	return ""
}

// Stop ends the flusher and any apply waiting for a failed commit to
// recover. Raft's Shutdown waits for the apply goroutine, so the node
// calls Stop first. Entries not yet committed to state.db stay in the
// Raft log and are applied again after a restart. Close calls Stop.
func (f *FSM) Stop() { f.stopOnce.Do(func() { close(f.stop) }) }

// stateDBOptions are the bbolt options of state.db, for Open and for the
// reopen after a failed commit.
func stateDBOptions() *bolt.Options {
	return &bolt.Options{
		Timeout:        5 * time.Second,
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
		// A large initial mapping (address space, not memory) spares
		// writers from waiting on a remap while a snapshot's long read
		// transaction is open.
		InitialMmapSize: 1 << 30,
	}
}

// Backoff between recovery attempts.
const (
	recoverFirst = 100 * time.Millisecond
	recoverMax   = 2 * time.Second
	recoverNag   = 30 * time.Second // a WARN line this often while it fails
)

// InjectCommitFault makes every commit of state.db call h first; an error
// from h fails the commit the way a full disk does (the transaction is
// rolled back), and h may block to hold a commit in progress. nil removes
// it. It is for tests of the FSM and of what is built on it.
func (f *FSM) InjectCommitFault(h func() error) {
	if h == nil {
		f.commitHook.Store(nil)
		return
	}
	f.commitHook.Store(&h)
}

// commitTx commits tx; an injected fault may fail it (rolling tx back, as bbolt
// does when a commit fails).
func (f *FSM) commitTx(tx *bolt.Tx) error {
	if h := f.commitHook.Load(); h != nil {
		if err := (*h)(); err != nil {
			_ = tx.Rollback()
			return err
		}
	}
	return tx.Commit()
}

// storedApplied reads the applied index state.db holds.
func (f *FSM) storedApplied() (uint64, error) {
	var applied uint64
	err := f.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			return errors.New("state.db has no meta bucket")
		}
		if v := meta.Get(keyApplied); len(v) >= 8 {
			applied = binary.BigEndian.Uint64(v)
		}
		return nil
	})
	return applied, err
}

// commitFailedLocked records a failed commit. Caller holds txMu; the
// pending transaction is gone.
func (f *FSM) commitFailedLocked(err error) {
	now := time.Now()
	f.failed, f.failedAt, f.failedTries, f.failedNag = err, now, 0, now
	f.recovered = make(chan struct{})
	f.nextTry.Store(now.Add(recoverFirst).UnixNano())
	f.failing.Store(true)
	durable, derr := f.storedApplied()
	noSpace := errors.Is(err, syscall.ENOSPC)
	reason := fmt.Sprintf("state.db commit failed: %v", err)
	if noSpace {
		reason = fmt.Sprintf("state.db commit failed, no space left on device in %s: %v", filepath.Dir(f.path), err)
	}
	f.reason.Store(&reason)
	close(*f.failedCh.Load()) // after the reason: a waiter it wakes reads it
	attrs := []any{"err", err, "no_space", noSpace, "data_dir", filepath.Dir(f.path),
		"applied", f.applied.Load(), "durable", durable}
	if derr != nil {
		attrs = append(attrs, "durable_err", derr)
	}
	f.log().Error("state.db commit failed; applying stops on this node until a commit succeeds (retrying; entries since the durable index are safe in the Raft log)", attrs...)
}

// awaitDurable waits while a commit failure is unresolved. It returns
// false when the FSM stops first.
func (f *FSM) awaitDurable() bool {
	for {
		f.txMu.Lock()
		failed, ch := f.failed != nil, f.recovered
		f.txMu.Unlock()
		if !failed {
			return true
		}
		select {
		case <-ch:
		case <-f.stop:
			return false
		}
	}
}

// tryRecover makes one recovery attempt and reports whether state.db is
// durable up to the applied index. Unless force is set, it waits for the
// backoff.
func (f *FSM) tryRecover(force bool) bool {
	if !f.failing.Load() {
		return true
	}
	if !force && time.Now().UnixNano() < f.nextTry.Load() {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.txMu.Lock()
	defer f.txMu.Unlock()
	if f.failed == nil {
		return true
	}
	start := time.Now()
	n, err := f.recoverLocked()
	if err != nil {
		f.failedTries++
		f.nextTry.Store(time.Now().Add(min(recoverFirst<<min(f.failedTries, 8), recoverMax)).UnixNano())
		if time.Since(f.failedNag) >= recoverNag {
			f.failedNag = time.Now()
			f.log().Warn("state.db still cannot commit", "err", err, "no_space", errors.Is(err, syscall.ENOSPC),
				"data_dir", filepath.Dir(f.path), "since", f.failedAt.Format(time.RFC3339), "attempts", f.failedTries)
		} else {
			f.log().Debug("state.db recovery attempt failed", "err", err, "attempt", f.failedTries)
		}
		return false
	}
	f.log().Info("state.db commits again; the node has recovered", "applied", f.applied.Load(), "reapplied", n,
		"failed_for", time.Since(f.failedAt).Round(time.Millisecond), "attempts", f.failedTries+1,
		"took", time.Since(start).Round(time.Millisecond))
	f.renewFailedCh() // before the reason goes: see CommitFailed
	f.failed = nil
	f.failing.Store(false)
	f.reason.Store(nil)
	close(f.recovered)
	return true
}

// recoverLocked reopens state.db, re-applies the entries between its
// stored applied index and the in-memory one, and commits. Caller holds mu
// for writing and txMu. It returns how many log entries it read.
func (f *FSM) recoverLocked() (n int, err error) {
	target := f.applied.Load()
	if f.tx != nil {
		_ = f.tx.Rollback()
		f.tx, f.txLogs = nil, 0
	}
	// bbolt rolls a failed commit back and stays usable after a failed
	// write, but a failed fsync of the meta page can leave the mapping
	// ahead of what Commit reported: start from the file as it is, and
	// trust only the applied index it holds.
	if err := f.db.Close(); err != nil {
		f.log().Debug("closing state.db before reopening it", "err", err)
	}
	db, err := bolt.Open(f.path, 0o600, stateDBOptions())
	if err != nil {
		return 0, fmt.Errorf("reopen %s: %w", f.path, err)
	}
	f.db = db
	durable, err := f.storedApplied()
	if err != nil {
		return 0, err
	}
	if durable >= target {
		f.applied.Store(durable)
		f.refreshDeadline()
		return 0, nil
	}
	src := f.logs.Load()
	if src == nil {
		return 0, fmt.Errorf("entries %d..%d must be applied again and the FSM has no log source", durable+1, target)
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("re-apply: %v", r)
		}
		if err != nil {
			if f.tx != nil {
				_ = f.tx.Rollback()
				f.tx, f.txLogs = nil, 0
			}
			f.applied.Store(target)
		}
	}()
	f.applied.Store(durable)
	const chunk = 256
	for idx := durable + 1; idx <= target; {
		batch := make([]*raft.Log, 0, min(chunk, target-idx+1))
		for ; idx <= target && len(batch) < chunk; idx++ {
			l := new(raft.Log)
			if err := (*src).GetLog(idx, l); err != nil {
				return n, fmt.Errorf("read log entry %d to apply it again: %w", idx, err)
			}
			batch = append(batch, l)
		}
		// The effects and replies were delivered by the first apply.
		if _, err := f.applyLocked(batch, make([]interface{}, len(batch))); err != nil {
			return n, err
		}
		n += len(batch)
	}
	if got := f.applied.Load(); got != target {
		return n, fmt.Errorf("re-applied up to %d, want %d", got, target)
	}
	if f.tx == nil {
		return n, nil
	}
	err = f.commitTx(f.tx)
	f.tx, f.txLogs = nil, 0
	return n, err
}

// clearFailureLocked forgets a failed commit that a snapshot install
// supersedes. Caller holds txMu.
func (f *FSM) clearFailureLocked() {
	if f.failed == nil {
		return
	}
	f.log().Info("a snapshot install replaces state.db; the failed commit no longer matters")
	f.renewFailedCh()
	f.failed = nil
	f.failing.Store(false)
	f.reason.Store(nil)
	close(f.recovered)
}
