package fsm_test

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/mcpd/mcpd/fsm"
)

func checkState(t *testing.T, path string) (fsm.StateVerdict, string) {
	t.Helper()
	v, why, err := fsm.CheckState(path)
	if err != nil {
		t.Fatal(err)
	}
	return v, why
}

// state.db is trusted only as its last clean close left it: the sidecar
// Close writes matches, open removes it before any write, and a changed
// byte or a missing sidecar is reported.
func Test_FSM_Sidecar_CleanCloseCrashAndFlip(t *testing.T) {
	tl := sharedLog(t)
	r := rand.New(rand.NewPCG(7, 8))
	path := filepath.Join(t.TempDir(), "state.db")
	if v, _ := checkState(t, path); v != fsm.StateAbsent {
		t.Fatalf("no file: %v", v)
	}

	f, err := fsm.Open(path, "n1")
	if err != nil {
		t.Fatal(err)
	}
	applyBatches(f, tl.logs[:200], r, 16)
	if v, _ := checkState(t, path); v != fsm.StateUnclean {
		t.Fatalf("open file: %v, want not closed cleanly", v)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if v, why := checkState(t, path); v != fsm.StateClean {
		t.Fatalf("after Close: %v (%s)", v, why)
	}

	// A reopen invalidates the sidecar before it writes anything.
	f, err = fsm.Open(path, "n1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(fsm.SidecarPath(path)); !os.IsNotExist(err) {
		t.Fatalf("sidecar still there while the file is open: %v", err)
	}
	applyBatches(f, tl.logs[200:300], r, 16)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	// One flipped bit anywhere, even in a page bbolt would never check.
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x10
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if v, why := checkState(t, path); v != fsm.StateCorrupt {
		t.Fatalf("flipped file: %v (%s)", v, why)
	}
	b[len(b)/2] ^= 0x10
	if err := os.WriteFile(path, b[:len(b)-4096], 0o600); err != nil {
		t.Fatal(err)
	}
	if v, why := checkState(t, path); v != fsm.StateCorrupt {
		t.Fatalf("truncated file: %v (%s)", v, why)
	}
	if err := os.WriteFile(fsm.SidecarPath(path), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if v, _ := checkState(t, path); v != fsm.StateCorrupt {
		t.Fatalf("unreadable sidecar: %v", v)
	}
}
