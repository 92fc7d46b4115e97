package lazyfs

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
)

// The bbolt tests run bbolt in a child process, as mcpd will be: a process
// that mmaps a file of a FUSE mount served by itself can deadlock.
const helperEnv = "LAZYFS_TEST_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		if err := runHelper(mode, os.Args[len(os.Args)-1]); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(2)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// requireFUSE fails the test where lazyfs must work (root on Linux) but
// cannot, and skips it only where it cannot be expected to.
func requireFUSE(t *testing.T) {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("lazyfs needs Linux FUSE")
	}
	if os.Geteuid() != 0 {
		t.Skip("lazyfs needs root to mount (mount(2) without fusermount)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatalf("lazyfs needs /dev/fuse on a root Linux machine: %v (load the fuse module or give the container the device)", err)
	}
}

type rig struct {
	t       *testing.T
	backing string
	mnt     string
	fs      *FS
}

func newRig(t *testing.T) *rig {
	requireFUSE(t)
	r := &rig{t: t, backing: t.TempDir(), mnt: t.TempDir()}
	r.mount()
	t.Cleanup(func() {
		if r.fs != nil {
			if err := r.fs.Unmount(); err != nil && !errors.Is(err, ErrClosed) {
				t.Errorf("cleanup unmount: %v", err)
				_ = syscall.Unmount(r.mnt, syscall.MNT_DETACH)
			}
		}
	})
	return r
}

func (r *rig) mount() {
	r.t.Helper()
	lfs, err := Mount(r.mnt, r.backing, nil)
	if err != nil {
		r.t.Fatalf("Mount: %v (lazyfs needs root and /dev/fuse)", err)
	}
	r.fs = lfs
}

// crash crashes the mount and mounts the backing dir again.
func (r *rig) crash() {
	r.t.Helper()
	if err := r.fs.Crash(); err != nil {
		r.t.Fatalf("Crash: %v", err)
	}
	r.fs = nil
	r.mount()
}

func (r *rig) path(name string) string { return filepath.Join(r.mnt, name) }

func (r *rig) read(name string) []byte {
	r.t.Helper()
	b, err := os.ReadFile(r.path(name))
	if err != nil {
		r.t.Fatal(err)
	}
	return b
}

func (r *rig) open(name string, flag int) *os.File {
	r.t.Helper()
	f, err := os.OpenFile(r.path(name), flag, 0o644)
	if err != nil {
		r.t.Fatal(err)
	}
	// Closed before the unmount even if the test fails: a mount this
	// process serves must not be busy with its own files.
	r.t.Cleanup(func() { f.Close() })
	return f
}

func pattern(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i%251)
	}
	return b
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func wantBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		t.Fatalf("%s: got %d bytes, want %d; first difference at %d", what, len(got), len(want), i)
	}
}

func TestSyncedWriteSurvivesCrash(t *testing.T) {
	r := newRig(t)
	data := pattern(1, 10000)
	f := r.open("a", os.O_CREATE|os.O_RDWR)
	_, err := f.Write(data)
	must(t, err)
	must(t, f.Sync())
	must(t, f.Close())
	st := r.fs.Stats()
	if st.Fsyncs != 1 || st.PendingBytes != 0 || st.PendingFiles != 0 {
		t.Fatalf("stats after fsync: %+v", st)
	}
	r.crash()
	wantBytes(t, "after crash", r.read("a"), data)
}

func TestUnsyncedWriteLostOnCrash(t *testing.T) {
	r := newRig(t)
	data := pattern(2, 5000)
	must(t, os.WriteFile(r.path("new"), data, 0o644))
	// The mount shows the data; the backing file does not have it yet.
	wantBytes(t, "before crash", r.read("new"), data)
	if fi, err := os.Stat(r.path("new")); err != nil || fi.Size() != 5000 {
		t.Fatalf("stat before crash: %v %v", fi, err)
	}
	if b, _ := os.ReadFile(filepath.Join(r.backing, "new")); len(b) != 0 {
		t.Fatalf("backing file has %d bytes before any fsync", len(b))
	}
	if st := r.fs.Stats(); st.PendingFiles != 1 || st.PendingBytes != 2*pageSize {
		t.Fatalf("stats before crash: %+v", st)
	}
	r.crash()
	// Creating the file was durable, its contents were not.
	wantBytes(t, "after crash", r.read("new"), nil)
}

func TestPartialSyncKeepsSyncedState(t *testing.T) {
	r := newRig(t)
	base := pattern(3, 3*pageSize+100)
	f := r.open("p", os.O_CREATE|os.O_RDWR)
	_, err := f.WriteAt(base, 0)
	must(t, err)
	must(t, f.Sync())

	// Second round, synced: two separate ranges, one straddling pages.
	want := append([]byte(nil), base...)
	for _, w := range []struct {
		off int64
		b   []byte
	}{{100, pattern(50, 300)}, {pageSize - 10, pattern(60, 2*pageSize)}} {
		_, err := f.WriteAt(w.b, w.off)
		must(t, err)
		copy(want[w.off:], w.b)
	}
	must(t, f.Sync())

	// Third round, never synced: overwrite, append past a hole.
	_, err = f.WriteAt(pattern(90, 50), 10)
	must(t, err)
	_, err = f.WriteAt(pattern(91, 700), int64(len(base))+5000)
	must(t, err)
	fi, err := f.Stat()
	must(t, err)
	if fi.Size() != int64(len(base))+5700 {
		t.Fatalf("size before crash %d", fi.Size())
	}
	got := make([]byte, fi.Size())
	_, err = f.ReadAt(got, 0)
	must(t, err)
	if !bytes.Equal(got[10:60], pattern(90, 50)) || !bytes.Equal(got[len(base):len(base)+5000], make([]byte, 5000)) {
		t.Fatal("merged read before crash is wrong")
	}
	must(t, f.Close())
	r.crash()
	wantBytes(t, "after crash", r.read("p"), want)
}

func TestSizeChanges(t *testing.T) {
	r := newRig(t)
	data := pattern(4, 10000)
	f := r.open("s", os.O_CREATE|os.O_RDWR)
	_, err := f.Write(data)
	must(t, err)
	must(t, f.Sync())

	// Shrink then grow without fsync: the cut bytes read back as zeros.
	must(t, f.Truncate(100))
	must(t, f.Truncate(6000))
	want := append(append([]byte(nil), data[:100]...), make([]byte, 5900)...)
	wantBytes(t, "shrunk and grown", r.read("s"), want)
	must(t, f.Close())
	r.crash()
	wantBytes(t, "unsynced truncate after crash", r.read("s"), data)

	// The same, synced.
	f = r.open("s", os.O_RDWR)
	must(t, f.Truncate(100))
	must(t, f.Truncate(6000))
	_, err = f.WriteAt([]byte("tail"), 5996)
	must(t, err)
	copy(want[5996:], "tail")
	must(t, f.Sync())
	must(t, f.Close())
	r.crash()
	wantBytes(t, "synced truncate after crash", r.read("s"), want)

	// Path truncate(2) and O_TRUNC are pending too.
	must(t, os.Truncate(r.path("s"), 10))
	if fi, err := os.Stat(r.path("s")); err != nil || fi.Size() != 10 {
		t.Fatalf("stat after truncate: %v %v", fi, err)
	}
	must(t, os.WriteFile(r.path("s"), []byte("replaced"), 0o644))
	wantBytes(t, "rewritten", r.read("s"), []byte("replaced"))
	r.crash()
	wantBytes(t, "unsynced O_TRUNC after crash", r.read("s"), want)
}

func TestRenameOfSyncedFile(t *testing.T) {
	r := newRig(t)
	must(t, os.WriteFile(r.path("old"), []byte("old contents"), 0o644))
	f := r.open("old", os.O_RDWR)
	must(t, f.Sync())
	must(t, f.Close())

	// The write-temp, fsync, rename pattern.
	f = r.open("new.tmp", os.O_CREATE|os.O_WRONLY|os.O_TRUNC)
	_, err := f.Write([]byte("new contents"))
	must(t, err)
	must(t, f.Sync())
	must(t, f.Close())
	must(t, os.Rename(r.path("new.tmp"), r.path("old")))
	// An unsynced file renamed over a synced one keeps no data.
	must(t, os.WriteFile(r.path("other"), []byte("synced"), 0o644))
	f = r.open("other", os.O_RDWR)
	must(t, f.Sync())
	must(t, f.Close())
	must(t, os.WriteFile(r.path("other.tmp"), []byte("never synced"), 0o644))
	must(t, os.Rename(r.path("other.tmp"), r.path("other")))
	wantBytes(t, "renamed before crash", r.read("other"), []byte("never synced"))
	r.crash()
	wantBytes(t, "renamed synced", r.read("old"), []byte("new contents"))
	wantBytes(t, "renamed unsynced", r.read("other"), nil)
	if _, err := os.Stat(r.path("new.tmp")); !os.IsNotExist(err) {
		t.Fatalf("temp name still there: %v", err)
	}
}

func TestUnmountIsClean(t *testing.T) {
	r := newRig(t)
	must(t, os.MkdirAll(r.path("d/e"), 0o755))
	must(t, os.WriteFile(r.path("d/e/f"), []byte("kept"), 0o644))
	must(t, r.fs.Unmount())
	if err := r.fs.Unmount(); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Unmount: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(r.backing, "d/e/f"))
	must(t, err)
	wantBytes(t, "backing after clean unmount", b, []byte("kept"))
	r.mount()
	wantBytes(t, "remounted", r.read("d/e/f"), []byte("kept"))
}

func TestUnlinkedPendingFileIsForgotten(t *testing.T) {
	r := newRig(t)
	must(t, os.WriteFile(r.path("x"), pattern(5, 9000), 0o644))
	must(t, os.Remove(r.path("x")))
	// The kernel sends the release of the closed file asynchronously: the
	// pending data goes once the file is both unlinked and released.
	deadline := time.Now().Add(10 * time.Second)
	for st := r.fs.Stats(); st.PendingFiles != 0; st = r.fs.Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("unlinked file still pending 10s after its release: %+v", st)
		}
		time.Sleep(5 * time.Millisecond) // polling the condition
	}
	// A new file, maybe with the same inode number, starts empty.
	must(t, os.WriteFile(r.path("y"), []byte("y"), 0o644))
	wantBytes(t, "new file", r.read("y"), []byte("y"))
}

// runChild runs this test binary as a helper in mode with arg and waits
// for it to print a line starting with "ready", which it returns. The helper
// keeps running until killed (or, for a helper that returns, exits).
func runChild(t *testing.T, mode, arg string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$", arg)
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	must(t, err)
	stdin, err := cmd.StdinPipe()
	must(t, err)
	must(t, cmd.Start())
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	sc := bufio.NewScanner(out)
	done := make(chan bool, 1)
	go func() { done <- sc.Scan() }()
	select {
	case ok := <-done:
		if !ok || !strings.HasPrefix(sc.Text(), "ready") {
			t.Fatalf("helper %s: %q %v", mode, sc.Text(), sc.Err())
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("helper %s did not finish", mode)
	}
	return cmd, sc.Text()
}

// kill SIGKILLs a helper and waits for it.
func kill(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	must(t, cmd.Process.Signal(syscall.SIGKILL))
	_ = cmd.Wait()
}

// helper modes:
//
//	bolt-put  PATH,FROM,N,NOSYNC  opens PATH, does N commits of keys FROM..,
//	                              one per transaction, prints ready, waits
//	bolt-keys PATH                checks the keys and prints "ready COUNT"
//	raft-snap DIR,N               makes N raft file snapshots (2 retained),
//	                              prints ready, waits
//	raft-list DIR                 checks the snapshots' contents and prints
//	                              "ready INDEXES", newest first
func runHelper(mode, arg string) error {
	switch mode {
	case "bolt-put":
		parts := strings.Split(arg, ",")
		if len(parts) != 4 {
			return fmt.Errorf("bad arg %q", arg)
		}
		path := parts[0]
		from, _ := strconv.Atoi(parts[1])
		n, _ := strconv.Atoi(parts[2])
		nosync, _ := strconv.Atoi(parts[3])
		db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
		if err != nil {
			return err
		}
		// NoSync drops the fsync of each commit. Growing the file
		// still fsyncs it (which would make earlier NoSync commits
		// durable) unless NoGrowSync is set as well.
		db.NoSync = nosync != 0
		db.NoGrowSync = nosync != 0
		for i := from; i < from+n; i++ {
			err := db.Update(func(tx *bolt.Tx) error {
				b, err := tx.CreateBucketIfNotExists([]byte("b"))
				if err != nil {
					return err
				}
				return b.Put(key(i), pattern(byte(i), 100))
			})
			if err != nil {
				return err
			}
		}
		fmt.Println("ready")
		// Wait to be killed, holding the database open.
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
		return nil
	case "bolt-keys":
		db, err := bolt.Open(arg, 0o600, &bolt.Options{Timeout: 5 * time.Second})
		if err != nil {
			return err
		}
		defer db.Close()
		count, err := countKeys(db)
		if err != nil {
			return err
		}
		fmt.Println("ready", count)
		return nil
	case "raft-snap":
		parts := strings.Split(arg, ",")
		n, _ := strconv.Atoi(parts[1])
		store, err := raft.NewFileSnapshotStoreWithLogger(parts[0], 2, hclog.NewNullLogger())
		if err != nil {
			return err
		}
		for i := 1; i <= n; i++ {
			sink, err := store.Create(raft.SnapshotVersionMax, uint64(i), 1, raft.Configuration{}, 1, nil)
			if err != nil {
				return err
			}
			if _, err := sink.Write(pattern(byte(i), 200000)); err != nil {
				return err
			}
			if err := sink.Close(); err != nil {
				return err
			}
		}
		fmt.Println("ready")
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
		return nil
	case "raft-list":
		store, err := raft.NewFileSnapshotStoreWithLogger(arg, 2, hclog.NewNullLogger())
		if err != nil {
			return err
		}
		metas, err := store.List()
		if err != nil {
			return err
		}
		var idx []string
		for _, m := range metas {
			_, rc, err := store.Open(m.ID)
			if err != nil {
				return err
			}
			b, err := io.ReadAll(rc)
			rc.Close()
			if err != nil {
				return err
			}
			if !bytes.Equal(b, pattern(byte(m.Index), 200000)) {
				return fmt.Errorf("snapshot %s has the wrong contents", m.ID)
			}
			idx = append(idx, strconv.FormatUint(m.Index, 10))
		}
		fmt.Println("ready", strings.Join(idx, " "))
		return nil
	}
	return fmt.Errorf("unknown helper mode %q", mode)
}

func key(i int) []byte { return binary.BigEndian.AppendUint64(nil, uint64(i)) }

// countKeys returns how many keys bucket b has, checking they are 0..n-1.
func countKeys(db *bolt.DB) (int, error) {
	n := 0
	err := db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("b"))
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			if !bytes.Equal(k, key(n)) || !bytes.Equal(v, pattern(byte(n), 100)) {
				return fmt.Errorf("key %d: got %x=%x", n, k, v)
			}
			n++
			return nil
		})
	})
	return n, err
}

// backingKeys opens the database in the backing dir directly (the mount
// must be gone) and counts its keys.
func backingKeys(t *testing.T, r *rig, name string) int {
	t.Helper()
	db, err := bolt.Open(filepath.Join(r.backing, name), 0o600, &bolt.Options{Timeout: 5 * time.Second, ReadOnly: true})
	must(t, err)
	defer db.Close()
	n, err := countKeys(db)
	must(t, err)
	return n
}

func TestBoltSyncedCommitsSurviveCrash(t *testing.T) {
	r := newRig(t)
	db := r.path("state.db")
	start := time.Now()
	cmd, _ := runChild(t, "bolt-put", fmt.Sprintf("%s,0,500,0", db))
	t.Logf("500 synced bbolt commits on lazyfs: %v; %+v", time.Since(start), r.fs.Stats())
	kill(t, cmd)
	must(t, r.fs.Crash())
	if n := backingKeys(t, r, "state.db"); n != 500 {
		t.Fatalf("after crash the database has %d keys, want 500", n)
	}
	// Remounted, bbolt reopens it, reads through mmap and goes on.
	r.mount()
	cmd, _ = runChild(t, "bolt-put", fmt.Sprintf("%s,500,100,0", db))
	kill(t, cmd)
	r.crash()
	if _, line := runChild(t, "bolt-keys", db); line != "ready 600" {
		t.Fatalf("after the second crash: %q, want 600 keys", line)
	}
}

func TestBoltNoSyncCommitsLostOnCrash(t *testing.T) {
	r := newRig(t)
	db := r.path("state.db")
	cmd, _ := runChild(t, "bolt-put", fmt.Sprintf("%s,0,50,0", db))
	kill(t, cmd)
	// With NoSync the commits are visible on the mount but never synced.
	cmd, _ = runChild(t, "bolt-put", fmt.Sprintf("%s,50,200,1", db))
	kill(t, cmd)
	if st := r.fs.Stats(); st.PendingBytes == 0 {
		t.Fatalf("no pending data after NoSync commits: %+v", st)
	}
	if _, line := runChild(t, "bolt-keys", db); line != "ready 250" {
		t.Fatalf("before the crash: %q, want 250 keys", line)
	}
	must(t, r.fs.Crash())
	r.fs = nil
	if n := backingKeys(t, r, "state.db"); n != 50 {
		t.Fatalf("after crash the database has %d keys, want the 50 synced ones", n)
	}
}

// hashicorp/raft's FileSnapshotStore writes a temp dir, fsyncs, renames it
// and removes old snapshots; all of that must work and survive a crash.
func TestRaftSnapshotsSurviveCrash(t *testing.T) {
	r := newRig(t)
	dir := r.path("raft")
	cmd, _ := runChild(t, "raft-snap", dir+",4")
	kill(t, cmd)
	r.crash()
	if _, line := runChild(t, "raft-list", dir); line != "ready 4 3" {
		t.Fatalf("snapshots after crash: %q, want 4 and 3", line)
	}
}

// A directory fsync reaches the backing directory.
func TestDirectoryFsync(t *testing.T) {
	r := newRig(t)
	must(t, os.Mkdir(r.path("d"), 0o755))
	d, err := os.Open(r.path("d"))
	must(t, err)
	defer d.Close()
	must(t, d.Sync())
}

// Random writes, truncations and fsyncs on a few files, checked against a
// model of what the mount shows and what is durable, across crashes.
func TestRandomOpsMatchModel(t *testing.T) {
	r := newRig(t)
	rng := rand.New(rand.NewPCG(1, 2))
	const files = 3
	cur := make([][]byte, files)
	durable := make([][]byte, files)
	for round := 0; round < 4; round++ {
		fds := make([]*os.File, files)
		for i := range fds {
			fds[i] = r.open(fmt.Sprint("f", i), os.O_CREATE|os.O_RDWR)
		}
		for op := 0; op < 300; op++ {
			i := rng.IntN(files)
			f := fds[i]
			switch k := rng.IntN(10); {
			case k < 6:
				off := rng.Int64N(5 * pageSize)
				b := pattern(byte(rng.IntN(256)), 1+rng.IntN(2*pageSize))
				_, err := f.WriteAt(b, off)
				must(t, err)
				if end := off + int64(len(b)); end > int64(len(cur[i])) {
					cur[i] = append(cur[i], make([]byte, end-int64(len(cur[i])))...)
				}
				copy(cur[i][off:], b)
			case k < 8:
				size := rng.Int64N(6 * pageSize)
				must(t, f.Truncate(size))
				if size <= int64(len(cur[i])) {
					cur[i] = cur[i][:size]
				} else {
					cur[i] = append(cur[i], make([]byte, size-int64(len(cur[i])))...)
				}
			case k < 9:
				must(t, f.Sync())
				durable[i] = append([]byte(nil), cur[i]...)
			default:
				// A new open drops the kernel's cached pages, so
				// this reads what the server merges.
				got := r.read(fmt.Sprint("f", i))
				wantBytes(t, fmt.Sprintf("round %d op %d file %d", round, op, i), got, cur[i])
			}
		}
		for _, f := range fds {
			must(t, f.Close())
		}
		r.crash()
		for i := range cur {
			wantBytes(t, fmt.Sprintf("round %d file %d after crash", round, i), r.read(fmt.Sprint("f", i)), durable[i])
			cur[i] = append([]byte(nil), durable[i]...)
		}
	}
}

// A mount still in use is detached and its connection aborted: Crash
// reports the error and the remaining user gets errors instead of hanging.
func TestBusyCrashAborts(t *testing.T) {
	r := newRig(t)
	f := r.open("held", os.O_CREATE|os.O_RDWR)
	start := time.Now()
	if err := r.fs.Crash(); err == nil {
		t.Fatal("Crash of a busy mount returned no error")
	} else {
		t.Logf("Crash after %v: %v", time.Since(start), err)
	}
	if _, err := f.Write([]byte("x")); err == nil {
		t.Fatal("write on an aborted mount succeeded")
	}
	f.Close()
	r.mount()
	wantBytes(t, "remounted", r.read("held"), nil)
}
