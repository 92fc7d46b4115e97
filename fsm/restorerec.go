package fsm

import (
	"fmt"

	"github.com/mcpd/mcpd/internal/mpack"
	"github.com/vmihailenco/msgpack/v5"
	bolt "go.etcd.io/bbolt"
)

// A snapshot restore records itself. The leader that restores a file
// first marks the copy it installs with a RestorePending; every node then
// holds the mark in its restored state, and the restore's audit entry is
// one TypeRestoreRecord command that the mark allows once and that
// removes it. The leader proposes it right after the restore; should it
// lose the leadership meanwhile, the next leader finds the mark and
// proposes it (cluster.Node's duty), so a restore the cluster took is
// always in the audit log, and one it did not take never is.

// TypeRestoreRecord appends a snapshot restore's audit entry and removes
// its mark.
const TypeRestoreRecord MessageType = 40

// RestorePending is the mark of a restore not yet recorded, and the
// command that records it.
type RestorePending struct {
	ID      string `msgpack:"id"` // the restore's, random
	Actor   string `msgpack:"a"`  // the operator who restored
	Subject string `msgpack:"s"`  // the audit entry's subject
}

// RestoreRecordArgs records the restore ID.
type RestoreRecordArgs = RestorePending

var keyRestorePending = []byte("restore_pending")

// PrepareRestore readies the state database at path, a copy about to be
// restored: it marks it with mark (nil: no mark, and one the file
// carries goes; a file saved between a restore and its record carries
// that restore's), and raises its cluster level to at least level, the
// cluster's, which a restore never lowers.
func PrepareRestore(path string, mark *RestorePending, level int) error {
	var raw []byte
	if mark != nil {
		var err error
		if raw, err = msgpack.Marshal(mark); err != nil {
			return err
		}
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		return err
	}
	err = db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			return fmt.Errorf("%s is not a state database: no meta bucket", path)
		}
		if ClusterLevel(tx) < level {
			if err := putClusterLevel(meta, level); err != nil {
				return err
			}
		}
		if raw == nil {
			return meta.Delete(keyRestorePending)
		}
		return meta.Put(keyRestorePending, raw)
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	return err
}

// PendingRestore reads the mark of a restore not yet recorded.
func PendingRestore(tx *bolt.Tx) (p RestorePending, ok bool) {
	raw := tx.Bucket(bucketMeta).Get(keyRestorePending)
	if raw == nil || mpack.Unmarshal(raw, &p) != nil {
		return RestorePending{}, false
	}
	return p, true
}

func init() {
	register(TypeRestoreRecord, func(a *RestoreRecordArgs) error {
		if a.ID == "" || len(a.ID) > 64 {
			return badArg("id", "must be 1 to 64 bytes")
		}
		return nil
	}, func(t *Tx, a *RestoreRecordArgs) (any, error) {
		p, ok := PendingRestore(t.Bolt())
		if !ok || p.ID != a.ID {
			// Recorded already (a proposal sent again after an unknown
			// outcome), or never restored here.
			return nil, conflictf("no restore %s waits to be recorded", a.ID)
		}
		return nil, t.Bolt().Bucket(bucketMeta).Delete(keyRestorePending)
	})
}
