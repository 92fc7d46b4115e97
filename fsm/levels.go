package fsm

import (
	"bytes"
	"encoding/binary"

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
const Level = 1

// LevelOf is the level a node must announce to apply commands of type t.
func LevelOf(t MessageType) int {
	switch t {
	case TypeTaskPrune, TypeAuditPrune:
		return 1
	}
	return 0
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
