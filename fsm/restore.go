package fsm

import (
	"fmt"
	"os"
	"runtime/debug"
	"time"

	bolt "go.etcd.io/bbolt"
)

// restoreTxSize bounds the write transactions that copy a snapshot.
const restoreTxSize = 64 << 20

// copySnapshot checks the snapshot file at src and copies its buckets and
// keys into a new database at dst, which Restore then swaps in.
//
// The received file cannot be opened as state.db directly: state.db does
// not sync its freelist, so opening it for writing walks every page, and
// bbolt reports an inconsistency found by that walk by panicking on a
// goroutine of its own, which ends the process; a page past the end of a
// truncated file faults outright. Here the snapshot is only read, on this
// goroutine, with faults turned into panics that are recovered into an
// error; the copy is consistent by construction. So a bad snapshot fails
// Restore and leaves the current state untouched.
func copySnapshot(src, dst string) (err error) {
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	in, err := bolt.Open(src, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		return fmt.Errorf("restore: snapshot is not a state database: %w", err)
	}
	defer in.Close()
	if err := in.View(func(tx *bolt.Tx) error {
		if tx.Size() > fi.Size() {
			return fmt.Errorf("restore: snapshot is truncated: %d of %d bytes", fi.Size(), tx.Size())
		}
		return nil
	}); err != nil {
		return err
	}
	_ = os.Remove(dst)
	out, err := bolt.Open(dst, 0o600, &bolt.Options{Timeout: time.Second, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			_ = os.Remove(dst)
		}
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("restore: snapshot is corrupt: %v", r)
		}
	}()
	if err := bolt.Compact(out, in, restoreTxSize); err != nil {
		return fmt.Errorf("restore: snapshot is corrupt: %w", err)
	}
	// Read from the copy, which Compact has read in full.
	if err := out.View(checkClusterLevel); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	return nil
}
