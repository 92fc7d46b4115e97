package fsm_test

import (
	"bytes"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/mcpd/mcpd/fsm"
)

type fzSink struct{ bytes.Buffer }

func (s *fzSink) ID() string    { return "fuzz" }
func (s *fzSink) Cancel() error { return nil }
func (s *fzSink) Close() error  { return nil }

// fzSmallState opens an FSM at dir and applies fzEntries to it.
func fzSmallState(tb testing.TB, dir string) *fsm.FSM {
	st, err := fsm.Open(filepath.Join(dir, "state.db"), "n1")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	for i, e := range fzEntries(tb)[:3] {
		b, err := fsm.EncodeEntry(e)
		if err != nil {
			tb.Fatal(err)
		}
		st.Apply(&raft.Log{Index: uint64(i + 1), Term: 1, Type: raft.LogCommand, Data: b})
	}
	return st
}

func fzTakeSnapshot(tb testing.TB, st *fsm.FSM) []byte {
	snap, err := st.Snapshot()
	if err != nil {
		tb.Fatal(err)
	}
	defer snap.Release()
	var sink fzSink
	if err := snap.Persist(&sink); err != nil {
		tb.Fatal(err)
	}
	return sink.Bytes()
}

// FuzzRestore feeds arbitrary bytes to FSM.Restore, as raft does with a
// snapshot from the leader. Restore must return (no panic, no hang); when
// it fails, the FSM keeps its state, applied index and digest, and stays
// usable; when it succeeds, the restored state can be read in full. The
// seeds are a real snapshot and truncations and bit flips of it.
func FuzzRestore(f *testing.F) {
	st := fzSmallState(f, f.TempDir())
	snap := fzTakeSnapshot(f, st)
	f.Add(snap)
	for _, n := range []int{0, 1, 16, 4096, 4096 + 16, 2 * 4096, 3 * 4096, len(snap) / 2, len(snap) - 4096, len(snap) - 1} {
		if n >= 0 && n < len(snap) {
			f.Add(snap[:n])
		}
	}
	// Bit flips in both meta pages (checksummed), in the page headers of
	// the freelist and bucket pages, and in keys and values.
	for _, off := range []int{16, 20, 32, 48, 56, 4096 + 16, 4096 + 32, 2*4096 + 8, 2*4096 + 10, 3*4096 + 8, 3*4096 + 20, 3*4096 + 40, 4*4096 + 16, len(snap) - 100} {
		if off < len(snap) {
			b := bytes.Clone(snap)
			b[off] ^= 0x04
			f.Add(b)
		}
	}
	f.Add(bytes.Repeat([]byte{0}, 4*4096))
	f.Add(append(bytes.Clone(snap), []byte("trailing")...))

	before, index, err := st.Digest()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		done := make(chan error, 1)
		go func() { done <- st.Restore(io.NopCloser(bytes.NewReader(data))) }()
		var rerr error
		select {
		case rerr = <-done:
		case <-time.After(30 * time.Second):
			t.Fatal("Restore hangs")
		}
		if rerr != nil {
			got, gotIndex, err := st.Digest()
			if err != nil || got != before || gotIndex != index || st.AppliedIndex() != index {
				t.Fatalf("failed restore (%v) changed the state: digest %x index %d, want %x %d (%v)", rerr, got, gotIndex, before, index, err)
			}
			return
		}
		// Accepted: the state must read in full, then go back to the
		// seed state for the next input.
		if _, _, err := st.Digest(); err != nil {
			t.Fatalf("restored state unreadable: %v", err)
		}
		if err := st.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
			t.Fatalf("restore of the seed snapshot after an accepted input: %v", err)
		}
		if got, _, err := st.Digest(); err != nil || got != before {
			t.Fatalf("seed snapshot restored to %x (%v), want %x", got, err, before)
		}
	})
}
