package queue

import bolt "go.etcd.io/bbolt"

// Stats is what a metrics scrape reads of one queue: its counts, and the
// number of messages it has been given since it was created.
type Stats struct {
	Info
	Enqueued uint64
}

// EachStats calls fn for every queue in name order, with its stats.
func EachStats(tx *bolt.Tx, fn func(name string, s Stats) error) error {
	c := tx.Bucket(bucketQueues).Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		name := string(k)
		info, err := ReadInfo(tx, name)
		if err != nil {
			return err
		}
		last, err := LastSeq(tx, name)
		if err != nil {
			return err
		}
		if err := fn(name, Stats{Info: info, Enqueued: last}); err != nil {
			return err
		}
	}
	return nil
}
