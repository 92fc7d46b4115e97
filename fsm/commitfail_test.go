package fsm_test

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/mcpd/mcpd/fsm"
)

// diskFull fails commits with ENOSPC while it is on, and counts them.
type diskFull struct {
	on    atomic.Bool
	fails atomic.Int64
}

func (d *diskFull) hook() error {
	if d.on.Load() {
		d.fails.Add(1)
		return fmt.Errorf("write state.db: %w", syscall.ENOSPC)
	}
	return nil
}

func logStore(t *testing.T, logs []*raft.Log) *raft.InmemStore {
	t.Helper()
	s := raft.NewInmemStore()
	if err := s.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
	return s
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// waitUntil polls cond every 5ms for up to a minute (the race detector
// slows the re-applies down a lot).
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A commit of state.db fails (a full disk) in the middle of the log:
// applying stops, the FSM says why, and once commits work again it
// re-applies what the failed commit lost. The end state equals a replica
// that never failed, each effect is delivered exactly once, and the state
// is durable.
func Test_FSM_CommitFailure_RecoversToReference(t *testing.T) {
	// A prefix of the shared log keeps the race-detector run short.
	logs := sharedLog(t).logs[:1500]
	n := len(logs)
	last := logs[n-1].Index
	r := rand.New(rand.NewPCG(5, 6))

	ref := mustFresh(t, "n1")
	var refFx collector
	ref.SetSink(refFx.sink)
	applyBatches(ref, logs, r, 32)
	final := mustDigest(t, ref)

	path := filepath.Join(t.TempDir(), "state.db")
	f, err := fsm.Open(path, "n1")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { f.Close() }()
	f.SetLogger(quietLogger())
	f.SetLogSource(logStore(t, logs))
	var fx collector
	f.SetSink(fx.sink)
	var disk diskFull
	f.InjectCommitFault(disk.hook)

	// First third committed; the disk fills; the second third applied
	// (one batch: a failed commit could otherwise stop the next one).
	applyBatches(f, logs[:n/3], r, 32)
	f.Flush()
	durable := logs[n/3-1].Index
	disk.on.Store(true)
	f.ApplyBatch(logs[n/3 : 2*n/3])
	if _, err := f.Snapshot(); err == nil || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("snapshot with a failing commit: %v, want ENOSPC", err)
	}
	reason := f.Degraded()
	if !strings.Contains(reason, "no space left") {
		t.Fatalf("Degraded() = %q, want it to name the full disk", reason)
	}
	if _, idx, err := f.Digest(); err != nil || idx != durable {
		t.Fatalf("digest while failing: index %d err %v, want the durable index %d", idx, err, durable)
	}
	// The flusher tries to recover every 100 ms or more (backoff), and
	// each attempt re-applies from the durable index: while one runs (a
	// stalled process, or the race detector, lets one start before this
	// check) the applied index climbs from the durable one, and it is
	// the in-memory one again when the attempt fails.
	want := logs[2*n/3-1].Index
	during := 0
	waitUntil(t, fmt.Sprintf("applied index %d while failing", want), func() bool {
		got := f.AppliedIndex()
		if got < durable || got > want {
			t.Fatalf("applied index %d while failing, want %d (or from the durable %d up during a recovery attempt)", got, want, durable)
		}
		if got != want {
			during++
		}
		return got == want
	})
	if during > 0 {
		t.Logf("applied index while failing: below %d for %d polls (a recovery attempt was running)", want, during)
	}

	// The rest waits for the recovery instead of applying over old state.
	done := make(chan struct{})
	go func() {
		defer close(done)
		applyBatches(f, logs[2*n/3:], rand.New(rand.NewPCG(7, 8)), 32)
	}()
	before := disk.fails.Load()
	waitUntil(t, "two failed recovery attempts", func() bool { return disk.fails.Load() >= before+2 })
	select {
	case <-done:
		t.Fatal("entries were applied while state.db could not commit")
	default:
	}

	disk.on.Store(false)
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("apply did not resume after the disk had space again")
	}
	if got := f.Degraded(); got != "" {
		t.Fatalf("Degraded() = %q after the recovery", got)
	}
	if got := f.AppliedIndex(); got != last {
		t.Fatalf("applied index %d, want %d", got, last)
	}
	if got := mustDigest(t, f); got != final {
		t.Fatalf("digest after recovery %x, reference %x", got, final)
	}
	if got, want := fmtFx(fx.take()), fmtFx(refFx.take()); !reflect.DeepEqual(got, want) {
		t.Fatalf("effects differ from the reference: %d effects, reference %d", len(got), len(want))
	}

	// Durable: a reopen holds the same state at the same index.
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	f = mustOpen(t, path, "n1")
	if got := f.AppliedIndex(); got != last {
		t.Fatalf("applied index after reopen %d, want %d", got, last)
	}
	if got := mustDigest(t, f); got != final {
		t.Fatalf("digest after reopen %x, reference %x", got, final)
	}
}

// Stopping while a commit failure is unresolved releases a waiting apply,
// and a restart replays from the durable index to the reference state.
func Test_FSM_CommitFailure_StopThenRestartReplays(t *testing.T) {
	tl := sharedLog(t)
	n := len(tl.logs)
	path := filepath.Join(t.TempDir(), "state.db")
	f, err := fsm.Open(path, "n2")
	if err != nil {
		t.Fatal(err)
	}
	f.SetLogger(quietLogger())
	f.SetLogSource(logStore(t, tl.logs))
	var disk diskFull
	f.InjectCommitFault(disk.hook)
	applyBatches(f, tl.logs[:n/2], rand.New(rand.NewPCG(9, 10)), 16)
	f.Flush()
	durable := f.AppliedIndex()
	disk.on.Store(true)
	f.ApplyBatch(tl.logs[n/2 : n/2+100])
	f.Flush()
	if f.Degraded() == "" {
		t.Fatal("a failed commit is not reported")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.ApplyBatch(tl.logs[n/2+100 : n/2+120])
	}()
	f.Stop()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Stop did not release the waiting apply")
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	g := mustOpen(t, path, "n2")
	if got := g.AppliedIndex(); got != durable {
		t.Fatalf("stored applied index %d, want the durable %d", got, durable)
	}
	applyBatches(g, tl.logs, rand.New(rand.NewPCG(11, 12)), 64)
	if got := mustDigest(t, g); got != tl.final {
		t.Fatalf("digest after restart %x, reference %x", got, tl.final)
	}
}

// A commit failure met by the flusher (not by an explicit flush) is
// recovered from by itself.
func Test_FSM_CommitFailure_FlusherRecovers(t *testing.T) {
	tl := sharedLog(t)
	f := mustFresh(t, "n1")
	f.SetLogger(quietLogger())
	f.SetLogSource(logStore(t, tl.logs))
	var disk diskFull
	disk.on.Store(true)
	f.InjectCommitFault(disk.hook)
	f.ApplyBatch(tl.logs[:200])
	waitUntil(t, "the flusher's commit to fail", func() bool { return f.Degraded() != "" })
	disk.on.Store(false)
	waitUntil(t, "the flusher to recover", func() bool { return f.Degraded() == "" })
	f.ApplyBatch(tl.logs[200:])
	if got := mustDigest(t, f); got != tl.final {
		t.Fatalf("digest %x, reference %x", got, tl.final)
	}
}
