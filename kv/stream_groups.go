package kv

import (
	"bytes"
	"encoding/binary"

	bolt "go.etcd.io/bbolt"
)

// The storage of a stream's consumer groups. A group has a record (its
// last delivered id, its entries-read counter and its counts), a pending
// entries list (PEL: each id delivered and not acknowledged, with its
// consumer, delivery time and delivery count), its consumers (each with
// its seen time and pending count), and each consumer's own PEL as an
// index of the group's. Keys put the stream's collKey first, then the
// group's name behind its length, so that a stream's groups and a
// group's entries are prefixes that never overlap another's; names and
// ids end the keys, so byte order is Redis's order (names sorted as its
// radix tree sorts them, ids ascending).
var (
	bucketXGroup = []byte("kvxgroup") // coll(key) group -> last(16) entries_read(8) pending(8) consumers(8)
	bucketXPEL   = []byte("kvxpel")   // coll(key) lp(group) id(16) -> delivery_time(8) delivery_count(8) consumer
	bucketXCons  = []byte("kvxcons")  // coll(key) lp(group) consumer -> seen_time(8) pending(8)
	bucketXCPEL  = []byte("kvxcpel")  // coll(key) lp(group) lp(consumer) id(16) -> nil
)

// invalidRead is a group's entries-read counter when it is unknown.
const invalidRead = -1

// group is one consumer group of a stream, open for a command.
type group struct {
	s         *stream
	name      []byte
	gp        []byte // coll(key) lp(name): the prefix of its PEL and consumers
	last      streamID
	read      int64 // entries read; invalidRead when unknown
	pending   int64
	consumers int64
}

// nack is one entry of a PEL.
type nack struct {
	consumer []byte
	time     int64 // last delivery, unix ms
	count    int64 // deliveries
}

// consumer is a group's consumer.
type consumer struct {
	seen    int64
	pending int64
}

func lenPrefixed(b []byte, s []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// checkGroupKey raises badKey unless the entries of a stream key, a
// group and a consumer of that group fit in state.db.
func checkGroupKey(key, group, consumer []byte) {
	if !fits(key, 4+len(group)+4+len(consumer)+16) {
		panic(badKey{errTooLong})
	}
}

func (s *stream) groupKey(name []byte) []byte { return append(bytes.Clone(s.prefix), name...) }

// group returns the stream's group name, or nil.
func (s *stream) group(name []byte) *group {
	v := s.c.tx.Bucket(bucketXGroup).Get(s.groupKey(name))
	if len(v) != 40 {
		return nil
	}
	g := s.newGroup(name)
	g.last = readID(v)
	g.read = int64(binary.BigEndian.Uint64(v[16:]))
	g.pending = int64(binary.BigEndian.Uint64(v[24:]))
	g.consumers = int64(binary.BigEndian.Uint64(v[32:]))
	return g
}

func (s *stream) newGroup(name []byte) *group {
	return &group{s: s, name: bytes.Clone(name), gp: lenPrefixed(bytes.Clone(s.prefix), name)}
}

// createGroup adds a group; false when the name is taken.
func (s *stream) createGroup(name []byte, last streamID, read int64) bool {
	if s.group(name) != nil {
		return false
	}
	g := s.newGroup(name)
	g.last, g.read = last, read
	g.save()
	return true
}

// groupNames lists the stream's groups in name order.
func (s *stream) groupNames() [][]byte {
	var out [][]byte
	cur := s.c.tx.Bucket(bucketXGroup).Cursor()
	for k, _ := cur.Seek(s.prefix); k != nil && bytes.HasPrefix(k, s.prefix); k, _ = cur.Next() {
		out = append(out, bytes.Clone(k[len(s.prefix):]))
	}
	return out
}

func (g *group) save() {
	v := g.last.append(make([]byte, 0, 40))
	v = binary.BigEndian.AppendUint64(v, uint64(g.read))
	v = binary.BigEndian.AppendUint64(v, uint64(g.pending))
	v = binary.BigEndian.AppendUint64(v, uint64(g.consumers))
	must(g.s.c.tx.Bucket(bucketXGroup).Put(g.s.groupKey(g.name), v))
}

// destroy removes the group with its PEL and consumers.
func (g *group) destroy() {
	tx := g.s.c.tx
	deletePrefix(tx.Bucket(bucketXPEL), g.gp)
	deletePrefix(tx.Bucket(bucketXCons), g.gp)
	deletePrefix(tx.Bucket(bucketXCPEL), g.gp)
	must(tx.Bucket(bucketXGroup).Delete(g.s.groupKey(g.name)))
}

// deleteGroups removes every group of the stream whose collKey is p.
func deleteGroups(tx *bolt.Tx, p []byte) {
	for _, b := range [][]byte{bucketXGroup, bucketXPEL, bucketXCons, bucketXCPEL} {
		deletePrefix(tx.Bucket(b), p)
	}
}

func (g *group) pelKey(id streamID) []byte { return id.append(bytes.Clone(g.gp)) }

func (g *group) consumerKey(name []byte) []byte { return append(bytes.Clone(g.gp), name...) }

func (g *group) cpelPrefix(name []byte) []byte { return lenPrefixed(bytes.Clone(g.gp), name) }

// nackOf returns id's PEL entry.
func (g *group) nackOf(id streamID) (nack, bool) {
	v := g.s.c.tx.Bucket(bucketXPEL).Get(g.pelKey(id))
	if len(v) < 16 {
		return nack{}, false
	}
	return decodeNack(v), true
}

func decodeNack(v []byte) nack {
	return nack{
		time:     int64(binary.BigEndian.Uint64(v)),
		count:    int64(binary.BigEndian.Uint64(v[8:])),
		consumer: bytes.Clone(v[16:]),
	}
}

// setNack stores id's PEL entry n; old is its entry before, when had.
// The consumers' PELs and pending counts follow. The caller saves g.
func (g *group) setNack(id streamID, n nack, old nack, had bool) {
	tx := g.s.c.tx
	if !had || !bytes.Equal(old.consumer, n.consumer) {
		if had {
			must(tx.Bucket(bucketXCPEL).Delete(id.append(g.cpelPrefix(old.consumer))))
			g.addPending(old.consumer, -1)
		} else {
			g.pending++
		}
		must(tx.Bucket(bucketXCPEL).Put(id.append(g.cpelPrefix(n.consumer)), nil))
		g.addPending(n.consumer, 1)
	}
	v := binary.BigEndian.AppendUint64(make([]byte, 0, 16+len(n.consumer)), uint64(n.time))
	v = binary.BigEndian.AppendUint64(v, uint64(n.count))
	must(tx.Bucket(bucketXPEL).Put(g.pelKey(id), append(v, n.consumer...)))
}

// delNack removes id's PEL entry n. The caller saves g.
func (g *group) delNack(id streamID, n nack) {
	tx := g.s.c.tx
	must(tx.Bucket(bucketXPEL).Delete(g.pelKey(id)))
	must(tx.Bucket(bucketXCPEL).Delete(id.append(g.cpelPrefix(n.consumer))))
	g.addPending(n.consumer, -1)
	g.pending--
}

// consumerOf returns a consumer of the group.
func (g *group) consumerOf(name []byte) (consumer, bool) {
	v := g.s.c.tx.Bucket(bucketXCons).Get(g.consumerKey(name))
	if len(v) != 16 {
		return consumer{}, false
	}
	return consumer{seen: int64(binary.BigEndian.Uint64(v)), pending: int64(binary.BigEndian.Uint64(v[8:]))}, true
}

func (g *group) putConsumer(name []byte, cr consumer) {
	v := binary.BigEndian.AppendUint64(make([]byte, 0, 16), uint64(cr.seen))
	v = binary.BigEndian.AppendUint64(v, uint64(cr.pending))
	must(g.s.c.tx.Bucket(bucketXCons).Put(g.consumerKey(name), v))
}

// createConsumer adds a consumer seen now; false when it exists. The
// caller saves g.
func (g *group) createConsumer(name []byte) bool {
	if _, ok := g.consumerOf(name); ok {
		return false
	}
	checkGroupKey(g.s.key, g.name, name)
	g.putConsumer(name, consumer{seen: g.s.c.now})
	g.consumers++
	return true
}

// seen creates the consumer when it is new and marks it seen now. The
// caller saves g.
func (g *group) seen(name []byte) {
	cr, ok := g.consumerOf(name)
	if !ok {
		g.createConsumer(name)
		return
	}
	cr.seen = g.s.c.now
	g.putConsumer(name, cr)
}

func (g *group) addPending(name []byte, d int64) {
	cr, _ := g.consumerOf(name)
	cr.pending += d
	g.putConsumer(name, cr)
}

// deleteConsumer removes a consumer and its pending entries, returning
// how many it had. The caller saves g.
func (g *group) deleteConsumer(name []byte) int64 {
	cr, ok := g.consumerOf(name)
	if !ok {
		return 0
	}
	tx := g.s.c.tx
	p := g.cpelPrefix(name)
	var ids []streamID
	cur := tx.Bucket(bucketXCPEL).Cursor()
	for k, _ := cur.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = cur.Next() {
		ids = append(ids, readID(k[len(p):]))
	}
	for _, id := range ids {
		must(tx.Bucket(bucketXPEL).Delete(g.pelKey(id)))
	}
	deletePrefix(tx.Bucket(bucketXCPEL), p)
	must(tx.Bucket(bucketXCons).Delete(g.consumerKey(name)))
	g.pending -= int64(len(ids))
	g.consumers--
	return cr.pending
}

// consumerNames lists the group's consumers in name order.
func (g *group) consumerNames() [][]byte {
	var out [][]byte
	cur := g.s.c.tx.Bucket(bucketXCons).Cursor()
	for k, _ := cur.Seek(g.gp); k != nil && bytes.HasPrefix(k, g.gp); k, _ = cur.Next() {
		out = append(out, bytes.Clone(k[len(g.gp):]))
	}
	return out
}

// pelFrom walks the group's PEL (or one consumer's, when name is not
// nil) from id on, in id order, until fn returns false.
func (g *group) pelFrom(name []byte, from streamID, fn func(id streamID, n nack) bool) {
	tx := g.s.c.tx
	p := g.gp
	b := tx.Bucket(bucketXPEL)
	if name != nil {
		p = g.cpelPrefix(name)
		b = tx.Bucket(bucketXCPEL)
	}
	cur := b.Cursor()
	for k, v := cur.Seek(from.append(bytes.Clone(p))); k != nil && bytes.HasPrefix(k, p); k, v = cur.Next() {
		id := readID(k[len(p):])
		var n nack
		if name != nil {
			n, _ = g.nackOf(id)
		} else {
			n = decodeNack(v)
		}
		if !fn(id, n) {
			return
		}
	}
}

// entry returns the fields of the entry id, or ok false when the stream
// has no such entry.
func (s *stream) entry(id streamID) (fields []Value, ok bool) {
	v := s.b.Get(s.entryKey(id))
	if v == nil {
		return nil, false
	}
	return decodeFields(v), true
}

// entryValue is an entry as replies give it: [id, [field, value, ...]].
func entryValue(id streamID, fields []Value) Value {
	return ArrayOf(BulkStr(id.String()), ArrayOf(fields...))
}

// distanceFromFirst estimates how many entries were added up to and
// including id (Redis's logical read counter), or invalidRead when the
// stream's deletions make it unknowable.
func (s *stream) distanceFromFirst(id streamID) int64 {
	if s.added == 0 {
		return 0
	}
	if s.length == 0 && id.cmp(s.last) < 1 {
		return int64(s.added)
	}
	switch c := id.cmp(s.last); {
	case c == 0:
		return int64(s.added)
	case c > 0:
		return invalidRead
	}
	if s.maxDel == (streamID{}) || s.maxDel.cmp(s.first) < 0 {
		switch c := id.cmp(s.first); {
		case c < 0:
			return int64(s.added - s.length)
		case c == 0:
			return int64(s.added - s.length + 1)
		}
	}
	return invalidRead
}

// hasTombstones reports whether an entry deleted by XDEL may lie at or
// after from.
func (s *stream) hasTombstones(from streamID) bool {
	if s.length == 0 || s.maxDel == (streamID{}) || s.first.cmp(s.maxDel) > 0 {
		return false
	}
	return from.cmp(s.maxDel) <= 0
}

// lag is how many entries the group has yet to read, or ok false when
// it cannot be known.
func (g *group) lag() (int64, bool) {
	s := g.s
	if s.added == 0 {
		return 0, true
	}
	if g.read != invalidRead && !s.hasTombstones(g.last) {
		return int64(s.added) - g.read, true
	}
	if r := s.distanceFromFirst(g.last); r != invalidRead {
		return int64(s.added) - r, true
	}
	return 0, false
}

// advance moves the group's last delivered id to id, an entry it
// delivers, keeping its entries-read counter.
func (g *group) advance(id streamID) {
	if id.cmp(g.last) <= 0 {
		return
	}
	s := g.s
	switch {
	case g.read != invalidRead && !s.hasTombstones(id):
		g.read++
	case s.added != 0:
		g.read = s.distanceFromFirst(id)
	}
	g.last = id
}
