package fsm

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/mcpd/mcpd/audit"
	"github.com/mcpd/mcpd/auth"
	"github.com/mcpd/mcpd/kv"
	"github.com/mcpd/mcpd/operator"
	"github.com/mcpd/mcpd/queue"
	"github.com/mcpd/mcpd/route"
	"github.com/mcpd/mcpd/schedule"
	"github.com/mcpd/mcpd/task"
	bolt "go.etcd.io/bbolt"
)

var (
	bucketMeta = []byte("meta")
	keyApplied = []byte("applied") // index(8) term(8)
	keyNow     = []byte("now")     // last applied command time, unix ms
)

// EffectSink receives, after each committed batch, the effects produced for
// connections of the local node, in apply order. It is called from the
// apply goroutine and must not block.
type EffectSink func([]queue.Effect)

// FSM applies committed log entries to state.db. Apply and ApplyBatch are
// called by raft from one goroutine; Snapshot's Persist runs concurrently
// with them on its own read transaction; the read helpers may be called
// from any goroutine.
type FSM struct {
	path  string
	local string

	mu   sync.RWMutex // guards db against Restore swapping the file
	db   *bolt.DB
	sink atomic.Pointer[EffectSink]

	// The write transaction of applied but not yet committed entries; see
	// ApplyBatch. txMu serialises its use between the apply goroutine, the
	// flusher and readers that need a fresh view.
	txMu    sync.Mutex
	tx      *bolt.Tx
	txSince time.Time
	txLogs  int
	stop    chan struct{}
	stopped chan struct{}

	// A failed commit and its recovery (commitfail.go). failed and the
	// fields after it are guarded by txMu; failing mirrors failed != nil.
	failed      error
	failedAt    time.Time
	failedNag   time.Time
	failedTries int
	recovered   chan struct{}                 // closed when the failure is resolved
	failedCh    atomic.Pointer[chan struct{}] // CommitFailed
	failing     atomic.Bool
	nextTry     atomic.Int64 // unix ns of the next recovery attempt
	reason      atomic.Pointer[string]
	logs        atomic.Pointer[LogSource]
	logger      atomic.Pointer[slog.Logger]
	commitHook  atomic.Pointer[func() error] // InjectCommitFault
	stopOnce    sync.Once

	applied  atomic.Uint64
	deadline atomic.Int64
}

var _ raft.BatchingFSM = (*FSM)(nil)

// Open opens (or creates) state.db at path. local is the id of this node.
func Open(path, local string) (*FSM, error) {
	f := &FSM{path: path, local: local, stop: make(chan struct{}), stopped: make(chan struct{})}
	f.renewFailedCh()
	if err := f.open(); err != nil {
		return nil, err
	}
	go f.flusher()
	return f, nil
}

func (f *FSM) open() error {
	// The file is about to change: it no longer is what a clean close
	// left (see sidecar.go).
	if err := removeSidecar(f.path); err != nil {
		return fmt.Errorf("open %s: %w", f.path, err)
	}
	db, err := bolt.Open(f.path, 0o600, stateDBOptions())
	if err != nil {
		return fmt.Errorf("open %s: %w", f.path, err)
	}
	var applied uint64
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if v := meta.Get(keyApplied); len(v) >= 8 {
			applied = binary.BigEndian.Uint64(v)
		}
		if err := checkClusterLevel(tx); err != nil {
			return err
		}
		if err := auth.CreateBuckets(tx); err != nil {
			return err
		}
		if err := kv.CreateBuckets(tx); err != nil {
			return err
		}
		if err := audit.CreateBuckets(tx); err != nil {
			return err
		}
		if err := route.CreateBuckets(tx); err != nil {
			return err
		}
		if err := task.CreateBuckets(tx); err != nil {
			return err
		}
		if err := schedule.CreateBuckets(tx); err != nil {
			return err
		}
		if err := operator.CreateBuckets(tx); err != nil {
			return err
		}
		return queue.CreateBuckets(tx)
	})
	if err != nil {
		db.Close()
		return fmt.Errorf("init %s: %w", f.path, err)
	}
	f.db = db
	f.applied.Store(applied)
	f.refreshDeadline()
	return nil
}

// Commit intervals of the pending write transaction: its age, or the
// entries (or, when more, the commands) it holds. The count keeps a write
// transaction from growing large in a busy interval: bbolt splits its
// nodes only at commit, so every insertion into a long-pending node (a
// list that grows at its head) moves the whole node.
const (
	flushInterval = 100 * time.Millisecond
	flushLogs     = 1024
)

// flusher commits the pending transaction once it is flushInterval old,
// and retries the recovery after a failed commit.
func (f *FSM) flusher() {
	defer close(f.stopped)
	t := time.NewTicker(flushInterval / 2)
	defer t.Stop()
	for {
		select {
		case <-f.stop:
			return
		case <-t.C:
		}
		if f.failing.Load() {
			f.tryRecover(false)
			continue
		}
		f.txMu.Lock()
		if f.tx != nil && time.Since(f.txSince) >= flushInterval {
			_ = f.commitLocked()
		}
		f.txMu.Unlock()
	}
}

// commitLocked commits the pending transaction. A failure (a full disk)
// leaves state.db behind the applied index; the entries in between are
// in the Raft log, and the FSM recovers by applying them again (see
// commitfail.go). While a failure is unresolved it returns that failure.
func (f *FSM) commitLocked() error {
	if f.failed != nil {
		return f.failed
	}
	if f.tx == nil {
		return nil
	}
	err := f.commitTx(f.tx)
	f.tx = nil
	f.txLogs = 0
	if err != nil {
		f.commitFailedLocked(err)
	}
	return err
}

// Flush commits everything applied so far to state.db.
func (f *FSM) Flush() { _ = f.flush() }

// flush commits everything applied so far, first recovering from a failed
// commit if there is one; it returns the error if state.db stays behind.
func (f *FSM) flush() error {
	if !f.tryRecover(true) {
		f.txMu.Lock()
		defer f.txMu.Unlock()
		if f.failed != nil {
			return f.failed
		}
	}
	f.txMu.Lock()
	defer f.txMu.Unlock()
	return f.commitLocked()
}

// SetSink installs the receiver of local effects.
func (f *FSM) SetSink(s EffectSink) { f.sink.Store(&s) }

// AppliedIndex is the index of the last log entry reflected in state.db.
func (f *FSM) AppliedIndex() uint64 { return f.applied.Load() }

// NextDeadline is the earliest time (unix ms) at which an expiry is due,
// or 0 when nothing is pending.
func (f *FSM) NextDeadline() int64 { return f.deadline.Load() }

func (f *FSM) refreshDeadline() {
	_ = f.db.View(func(tx *bolt.Tx) error {
		f.deadline.Store(nextDeadline(tx))
		return nil
	})
}

// View runs fn on a view of the state that includes every applied entry.
// While entries wait for their commit, fn reads the pending write
// transaction itself (applies wait meanwhile), so a read never costs an
// fsync. fn must not write.
func (f *FSM) View(fn func(tx *bolt.Tx) error) error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	f.txMu.Lock()
	if f.tx != nil {
		defer f.txMu.Unlock()
		return fn(f.tx)
	}
	f.txMu.Unlock()
	return f.db.View(fn)
}

// Close commits what was applied and closes state.db.
func (f *FSM) Close() error {
	f.Stop()
	<-f.stopped
	if err := f.flush(); err != nil {
		f.log().Error("closing state.db behind the applied index; the entries after it are applied again from the Raft log at the next start",
			"err", err, "applied", f.applied.Load())
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.db.Close(); err != nil {
		return err
	}
	// The file is final: record its checksum so the next open can trust
	// it (see sidecar.go).
	return writeSidecar(f.path)
}

// Apply implements raft.FSM for a single entry.
func (f *FSM) Apply(l *raft.Log) interface{} {
	return f.ApplyBatch([]*raft.Log{l})[0]
}

// ApplyBatch implements raft.BatchingFSM. The response for each entry is
// the []*Reply of its client commands (nil when it has none): the leader
// returns them to followers that forwarded the entry. Entries are applied to a write
// transaction that also records the applied index; the transaction is
// committed every flushInterval or flushLogs entries or commands (and before a
// snapshot or a read), not per batch: the Raft log already holds every
// committed entry durably, and after a crash the entries after the
// committed applied index are applied again from it. Entries at or below
// the stored index were applied before and are skipped.
func (f *FSM) ApplyBatch(logs []*raft.Log) []interface{} {
	out := make([]interface{}, len(logs))
	// After a failed commit nothing is applied until state.db has caught
	// up again (commitfail.go): applying on top of the older state would
	// leave a gap.
	for {
		if !f.awaitDurable() {
			// Stopping: these entries are applied again from the Raft
			// log after the restart.
			return out
		}
		f.mu.RLock()
		f.txMu.Lock()
		if f.failed == nil {
			break
		}
		f.txMu.Unlock()
		f.mu.RUnlock()
	}
	defer f.mu.RUnlock()
	effects, err := func() (effects []queue.Effect, err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("%v\n%s", r, debug.Stack())
			}
		}()
		return f.applyLocked(logs, out)
	}()
	if err != nil {
		// Nothing of this batch may reach state.db.
		if f.tx != nil {
			_ = f.tx.Rollback()
			f.tx, f.txLogs = nil, 0
		}
		_ = f.db.View(func(tx *bolt.Tx) error {
			if v := tx.Bucket(bucketMeta).Get(keyApplied); len(v) >= 8 {
				f.applied.Store(binary.BigEndian.Uint64(v))
			}
			return nil
		})
		f.txMu.Unlock()
		panic(fmt.Sprintf("fsm: %v", err))
	}
	if f.txLogs >= flushLogs {
		// A failure is recorded and recovered from by the flusher; this
		// batch's effects are delivered, as the entries are applied.
		_ = f.commitLocked()
	}
	f.txMu.Unlock()
	if s := f.sink.Load(); s != nil && len(effects) > 0 {
		(*s)(effects)
	}
	return out
}

func (f *FSM) applyLocked(logs []*raft.Log, out []interface{}) ([]queue.Effect, error) {
	applied := f.applied.Load()
	var last *raft.Log
	for _, l := range logs {
		if l.Index > applied {
			last = l
		}
	}
	if last == nil {
		return nil, nil
	}
	if f.tx == nil {
		tx, err := f.db.Begin(true)
		if err != nil {
			return nil, fmt.Errorf("begin state.db transaction: %w", err)
		}
		f.tx, f.txSince = tx, time.Now()
	}
	tx := f.tx
	meta := tx.Bucket(bucketMeta)
	var now int64
	if v := meta.Get(keyNow); len(v) == 8 {
		now = int64(binary.BigEndian.Uint64(v))
	}
	var effects []queue.Effect
	cmds := 0
	for i, l := range logs {
		if l.Index <= applied || l.Type != raft.LogCommand {
			continue
		}
		e, err := DecodeEntry(l.Data)
		if err != nil {
			// Applying a damaged entry would make this replica diverge.
			return nil, fmt.Errorf("log entry %d: %v", l.Index, err)
		}
		now = max(now, e.Time)
		cmds += len(e.Cmds)
		var replies []*Reply
		effects, replies = f.applyEntry(tx, now, e, effects)
		if replies != nil {
			out[i] = replies
		}
	}
	var idx [16]byte
	binary.BigEndian.PutUint64(idx[:8], last.Index)
	binary.BigEndian.PutUint64(idx[8:], last.Term)
	if err := meta.Put(keyApplied, idx[:]); err != nil {
		return nil, err
	}
	var ts [8]byte
	binary.BigEndian.PutUint64(ts[:], uint64(now))
	if err := meta.Put(keyNow, ts[:]); err != nil {
		return nil, err
	}
	f.txLogs += max(len(logs), cmds)
	f.deadline.Store(nextDeadline(tx))
	f.applied.Store(last.Index)
	return effects, nil
}

// applyEntry applies one entry's commands in order, each followed by its
// audit entry (audit.go). Expiries due at the entry's time run first, so
// every replica sees them at the same point.
func (f *FSM) applyEntry(tx *bolt.Tx, now int64, e *Entry, effects []queue.Effect) ([]queue.Effect, []*Reply) {
	t := &Tx{Tx: queue.NewTx(tx, now, f.local), Tasks: task.NewTx(tx, now, f.local)}
	t.Effects = effects
	if err := t.Expire(); err != nil {
		panic(fmt.Sprintf("fsm: expire at %d: %v", now, err))
	}
	if err := t.Tasks.Expire(); err != nil {
		panic(fmt.Sprintf("fsm: expire tasks at %d: %v", now, err))
	}
	// Redis keys whose time has come, a bounded number per entry (reads
	// treat an expired key as absent whether or not it is removed yet).
	if err := kv.Expire(tx, now, 256); err != nil {
		panic(fmt.Sprintf("fsm: expire keys at %d: %v", now, err))
	}
	if err := t.finish(); err != nil {
		panic(fmt.Sprintf("fsm: dispatch at %d: %v", now, err))
	}
	var replies []*Reply
	for i := range e.Cmds {
		c := &e.Cmds[i]
		h, ok := handlers[c.Type]
		if !ok {
			panic(fmt.Sprintf("fsm: unknown command type %d", c.Type))
		}
		t.SetActor(c.Actor)
		res, args, err := h(t, c.Body)
		if err != nil && !isBusiness(err) {
			panic(fmt.Sprintf("fsm: command type %d: %v", c.Type, err))
		}
		// Its audit entry, also for a command refused with a business
		// error (which changed nothing else).
		if _, aerr := audit.Append(tx, auditEvent(tx, now, c, args, res, err)); aerr != nil {
			panic(fmt.Sprintf("fsm: audit entry of command type %d: %v", c.Type, aerr))
		}
		if c.Conn != "" {
			if err != nil {
				res = nil
			}
			r := &Reply{Conn: c.Conn, Req: c.Req, Type: c.Type, Err: err, Result: res}
			replies = append(replies, r)
			if queue.ConnNode(c.Conn) == f.local {
				// The reply precedes the deliveries this command makes.
				t.Effects = append(t.Effects, r)
			}
		}
		if err := t.finish(); err != nil {
			panic(fmt.Sprintf("fsm: dispatch after command type %d: %v", c.Type, err))
		}
	}
	// Redis clients blocked on a queue's stream wake when a message of
	// it becomes ready, whoever enqueued it.
	if names := t.Readied(); len(names) > 0 {
		keys := make([][]byte, 0, len(names))
		for _, n := range names {
			if !auth.IsInbox(n) {
				keys = append(keys, kv.QueueKey(n))
			}
		}
		if len(keys) > 0 {
			t.Effects = append(t.Effects, &RedisTouched{Keys: keys})
		}
	}
	return t.Effects, replies
}

// nextDeadline is the earliest timer of the queues and the tasks, or 0.
func nextDeadline(tx *bolt.Tx) int64 {
	q, k := queue.NextDeadline(tx), task.NextDeadline(tx)
	if q == 0 || (k != 0 && k < q) {
		return k
	}
	return q
}

func isBusiness(err error) bool {
	for _, s := range []error{queue.ErrNotFound, queue.ErrFull, queue.ErrConflict, queue.ErrBadRequest, queue.ErrForbidden, ErrCycle} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// Digest is a SHA-256 over every bucket's keys and values in order: equal
// digests mean equal logical state. It returns the applied index the
// digest was taken at, read in the same view, so two replicas can be
// compared only where their indexes agree.
func (f *FSM) Digest() (sum [32]byte, index uint64, err error) {
	h := sha256.New()
	err = f.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keyApplied); len(v) >= 8 {
			index = binary.BigEndian.Uint64(v)
		}
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			fmt.Fprintf(h, "bucket %q\n", name)
			return b.ForEach(func(k, v []byte) error {
				fmt.Fprintf(h, "%x=%x\n", k, v)
				return nil
			})
		})
	})
	copy(sum[:], h.Sum(nil))
	return sum, index, err
}

// Snapshot implements raft.FSM: it opens a read transaction, which Persist
// streams out as a consistent copy of state.db while Apply goes on.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	// raft calls Snapshot between applies; the snapshot must contain every
	// entry applied so far.
	if err := f.flush(); err != nil {
		return nil, fmt.Errorf("snapshot: state.db is behind the applied index: %w", err)
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	tx, err := f.db.Begin(false)
	if err != nil {
		return nil, err
	}
	return &snapshot{tx: tx}, nil
}

type snapshot struct{ tx *bolt.Tx }

func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := s.tx.WriteTo(sink); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *snapshot) Release() { _ = s.tx.Rollback() }

// Restore implements raft.FSM: it writes the snapshot to a temporary file,
// checks that it opens as a bbolt database, and swaps it in place of
// state.db.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	tmp := f.path + ".restore"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, rc); err != nil {
		out.Close()
		os.Remove(tmp)
		return fmt.Errorf("restore: copy snapshot: %w", err)
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	// Only a checked copy of the snapshot is swapped in (restore.go).
	err = copySnapshot(tmp, tmp+".db")
	os.Remove(tmp)
	if err != nil {
		return err
	}
	tmp += ".db"
	f.mu.Lock()
	defer f.mu.Unlock()
	f.txMu.Lock()
	if f.tx != nil {
		// Superseded by the snapshot.
		_ = f.tx.Rollback()
		f.tx = nil
		f.txLogs = 0
	}
	f.clearFailureLocked()
	f.txMu.Unlock()
	if err := f.db.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, f.path); err != nil {
		return err
	}
	// The rename must be durable before raft records the snapshot as
	// installed, or a crash could bring back the old state.db.
	if dir, err := os.Open(filepath.Dir(f.path)); err == nil {
		err = dir.Sync()
		dir.Close()
		if err != nil {
			return fmt.Errorf("restore: sync %s: %w", filepath.Dir(f.path), err)
		}
	}
	return f.open()
}
