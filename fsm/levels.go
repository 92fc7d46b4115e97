package fsm

import (
	"bytes"
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Command levels. During a rolling upgrade nodes of two versions apply
// the same log, and a node stops at a command type it does not know
// (Apply panics: guessing would split the replicas). So a command type
// newer than every version that may still run is proposed only once
// every member of the cluster has said it applies it: each node
// announces its Level when it starts (NodeStartedArgs.Level), the state
// records the latest announcement per node (NodeLevels), and the leader
// and the admin API check cluster.Node.MembersApply before proposing a
// type of LevelOf > 0. A node of a version before levels announces
// nothing, which counts as level 0.
//
// A change to what an existing command does cannot wait at the leader
// the way a new type does: every replica must switch at the same entry,
// or their states part. So the state also holds the cluster level
// (ClusterLevel), which the leader raises with one TypeClusterLevel
// command once every member announced that level; apply code that
// behaves differently reads it. It never goes down. A version whose
// Level is below the state's cluster level refuses to open that state,
// or to restore it from a snapshot, and stops at a TypeClusterLevel above
// its Level. The levels:
//
//	1  new types task.prune and audit.prune
//	2  new type cluster.level; at cluster level 2 an enqueue's (and a
//	   send's) audit subject is QUEUE/SEQ, naming the message it
//	   stored, instead of QUEUE
//	3  new type restore.record (restorerec.go)
const Level = 3

// LevelOf is the level a node must announce to apply commands of type t.
func LevelOf(t MessageType) int {
	switch t {
	case TypeTaskPrune, TypeAuditPrune:
		return 1
	case TypeClusterLevel:
		return 2
	case TypeRestoreRecord:
		return 3
	}
	return 0
}

// TypeClusterLevel raises the cluster level (ClusterLevel).
const TypeClusterLevel MessageType = 39

// ClusterLevelArgs is the cluster level to reach.
type ClusterLevelArgs struct {
	Level int `msgpack:"l"`
}

// ClusterLevelResult is the cluster level before and after the command
// (a command that would not raise it is refused with ErrConflict).
type ClusterLevelResult struct {
	Was   int `msgpack:"w"`
	Level int `msgpack:"l"`
}

// keyClusterLevel is the meta key of the cluster level.
var keyClusterLevel = []byte("cluster_level")

// ClusterLevel reads the cluster level: 0 in a state no TypeClusterLevel
// has reached.
func ClusterLevel(tx *bolt.Tx) int {
	if n, w := binary.Uvarint(tx.Bucket(bucketMeta).Get(keyClusterLevel)); w > 0 {
		return int(n)
	}
	return 0
}

// putClusterLevel stores the cluster level in the meta bucket.
func putClusterLevel(meta *bolt.Bucket, level int) error {
	return meta.Put(keyClusterLevel, binary.AppendUvarint(nil, uint64(max(level, 0))))
}

// checkClusterLevel refuses a state of a higher cluster level than this
// version runs.
func checkClusterLevel(tx *bolt.Tx) error {
	if meta := tx.Bucket(bucketMeta); meta != nil {
		if l := ClusterLevel(tx); l > Level {
			return fmt.Errorf("the state is at cluster level %d, and this version runs level %d at most: run a newer version (a cluster level never goes down)", l, Level)
		}
	}
	return nil
}

func init() {
	register(TypeClusterLevel, func(a *ClusterLevelArgs) error {
		return checkRange("level", int64(a.Level), 1, 1<<20)
	}, func(t *Tx, a *ClusterLevelArgs) (any, error) {
		was := ClusterLevel(t.Bolt())
		if a.Level > Level {
			// Proposed only once every member announced it: this node
			// joined later, on an older version. Guessing the newer
			// behaviour would part the replicas.
			panic(fmt.Sprintf("fsm: the cluster level rises to %d, and this version runs level %d at most: run a newer version", a.Level, Level))
		}
		if a.Level <= was {
			// A raise proposed again (its first outcome was unknown), or
			// by two leaders in turn.
			return nil, conflictf("the cluster level is %d already", was)
		}
		r := &ClusterLevelResult{Was: was, Level: a.Level}
		return r, putClusterLevel(t.Bolt().Bucket(bucketMeta), r.Level)
	})
}

// levelKey is the meta key of a node's announced level.
func levelKey(node string) []byte { return []byte("level:" + node) }

// recordLevel stores the level a node announced when it started.
func recordLevel(tx *bolt.Tx, node string, level int) error {
	return tx.Bucket(bucketMeta).Put(levelKey(node), binary.AppendUvarint(nil, uint64(max(level, 0))))
}

// NodeLevels reads the level each node last announced.
func NodeLevels(tx *bolt.Tx) map[string]int {
	out := map[string]int{}
	c := tx.Bucket(bucketMeta).Cursor()
	p := []byte("level:")
	for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
		if n, w := binary.Uvarint(v); w > 0 {
			out[string(k[len(p):])] = int(n)
		}
	}
	return out
}
