package task

import (
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
	bolt "go.etcd.io/bbolt"
)

// CountStates counts the stored tasks by state. It reads every task, so
// it costs time in proportion to the tasks kept.
func CountStates(tx *bolt.Tx) (map[string]int64, error) {
	out := map[string]int64{}
	var k struct {
		State string `msgpack:"s"`
	}
	err := tx.Bucket(bucketTasks).ForEach(func(id, raw []byte) error {
		k.State = ""
		if err := msgpack.Unmarshal(raw, &k); err != nil {
			return fmt.Errorf("decode task %q: %w", id, err)
		}
		out[k.State]++
		return nil
	})
	return out, err
}
