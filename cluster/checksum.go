package cluster

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// bbolt checksums only its meta pages: a flipped byte in a stored value
// comes back as valid data. checksumStore sits between raft (and its log
// cache) and raft-boltdb and seals every log entry and every stable-store
// value with a CRC32C, checked on every read. A mismatch is reported as
// ErrCorrupt; it is never handed to raft as data.
//
// A log entry's seal travels in raft.Log.Extensions, below raft: raft
// itself puts nothing there and mcpd never calls ApplyLog with extensions,
// but whatever arrives is kept and given back unchanged. The stored
// Extensions are the original bytes, then logSealMagic, then the CRC32C
// (big-endian) of Index, Term, Type, Data and the original Extensions.
// Only the stored copy is sealed: the entries raft passes in, which the
// log cache keeps in memory, are never modified.
//
// A stable value (current term, last vote) is stored as the value, then
// stableSealMagic, then the CRC32C of its key and value.
//
// The key sealKey in the stable store says that every entry and value
// is sealed. A store written before seals existed has no such key; it is
// sealed in place when first opened (see seal).

// ErrCorrupt reports data that failed its checksum.
var ErrCorrupt = errors.New("checksum mismatch")

var (
	logSealMagic    = []byte("mcL1")
	stableSealMagic = []byte("mcS1")
	sealKey         = []byte("mcpd.sealed")
	castagnoli      = crc32.MakeTable(crc32.Castagnoli)
	// The stable keys hashicorp/raft writes.
	raftStableKeys = [][]byte{[]byte("CurrentTerm"), []byte("LastVoteTerm"), []byte("LastVoteCand")}
)

const sealLen = 8 // magic + CRC32C

func logCRC(l *raft.Log, ext []byte) uint32 {
	var hdr [8 + 8 + 1 + 8]byte
	binary.BigEndian.PutUint64(hdr[0:], l.Index)
	binary.BigEndian.PutUint64(hdr[8:], l.Term)
	hdr[16] = byte(l.Type)
	binary.BigEndian.PutUint64(hdr[17:], uint64(len(l.Data)))
	c := crc32.Update(0, castagnoli, hdr[:])
	c = crc32.Update(c, castagnoli, l.Data)
	return crc32.Update(c, castagnoli, ext)
}

// sealLog returns a copy of l whose Extensions carry the seal.
func sealLog(l *raft.Log) *raft.Log {
	out := *l
	ext := make([]byte, 0, len(l.Extensions)+sealLen)
	ext = append(ext, l.Extensions...)
	ext = append(ext, logSealMagic...)
	ext = binary.BigEndian.AppendUint32(ext, logCRC(l, l.Extensions))
	out.Extensions = ext
	return &out
}

// openLog checks the seal of an entry read from the store and strips it.
// With strict unset (a store not sealed yet), an entry without a seal is
// accepted as it is; sealed reports whether it had one.
func openLog(l *raft.Log, strict bool) (sealed bool, err error) {
	ext := l.Extensions
	if len(ext) < sealLen || !bytes.Equal(ext[len(ext)-sealLen:len(ext)-4], logSealMagic) {
		if strict {
			return false, fmt.Errorf("%w: log entry %d has no checksum", ErrCorrupt, l.Index)
		}
		return false, nil
	}
	orig := ext[:len(ext)-sealLen]
	if got, want := logCRC(l, orig), binary.BigEndian.Uint32(ext[len(ext)-4:]); got != want {
		return true, fmt.Errorf("%w: log entry %d (term %d): crc32c %08x, stored %08x", ErrCorrupt, l.Index, l.Term, got, want)
	}
	if len(orig) == 0 {
		orig = nil
	}
	l.Extensions = orig
	return true, nil
}

func stableCRC(key, val []byte) uint32 {
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(key)))
	c := crc32.Update(0, castagnoli, n[:])
	c = crc32.Update(c, castagnoli, key)
	return crc32.Update(c, castagnoli, val)
}

func sealStable(key, val []byte) []byte {
	out := make([]byte, 0, len(val)+sealLen)
	out = append(out, val...)
	out = append(out, stableSealMagic...)
	return binary.BigEndian.AppendUint32(out, stableCRC(key, val))
}

func openStable(key, raw []byte, strict bool) ([]byte, bool, error) {
	if len(raw) < sealLen || !bytes.Equal(raw[len(raw)-sealLen:len(raw)-4], stableSealMagic) {
		if strict {
			return nil, false, fmt.Errorf("%w: stable key %q has no checksum", ErrCorrupt, key)
		}
		return raw, false, nil
	}
	val := raw[:len(raw)-sealLen]
	if got, want := stableCRC(key, val), binary.BigEndian.Uint32(raw[len(raw)-4:]); got != want {
		return nil, true, fmt.Errorf("%w: stable key %q: crc32c %08x, stored %08x", ErrCorrupt, key, got, want)
	}
	return val, true, nil
}

// checksumStore is the raft.LogStore and raft.StableStore mcpd gives raft.
type checksumStore struct {
	b      *raftboltdb.BoltStore
	strict bool // every entry and value is sealed
}

var (
	_ raft.LogStore    = (*checksumStore)(nil)
	_ raft.StableStore = (*checksumStore)(nil)
)

// newChecksumStore wraps b. A store that is not sealed yet is sealed
// unless b was opened read-only (readOnly): then unsealed entries are
// accepted as they are and sealed ones are checked. It returns whether
// the store had to be sealed now.
func newChecksumStore(b *raftboltdb.BoltStore, readOnly bool) (*checksumStore, bool, error) {
	s := &checksumStore{b: b}
	raw, err := b.Get(sealKey)
	switch {
	case err == nil:
		if _, _, err := openStable(sealKey, raw, true); err != nil {
			return nil, false, err
		}
		s.strict = true
		return s, false, nil
	case err.Error() != raftboltdb.ErrKeyNotFound.Error():
		return nil, false, err
	case readOnly:
		return s, false, nil
	}
	if err := s.seal(); err != nil {
		return nil, false, err
	}
	s.strict = true
	return s, true, nil
}

// seal rewrites a store written before seals existed: every entry and
// raft's stable values get their checksum (an entry that already has one
// is checked instead), then the seal key records that the store is sealed.
// On a new store it only writes the key.
func (s *checksumStore) seal() error {
	first, err := s.b.FirstIndex()
	if err != nil {
		return err
	}
	last, err := s.b.LastIndex()
	if err != nil {
		return err
	}
	var batch []*raft.Log
	for i := first; i != 0 && i <= last; i++ {
		var l raft.Log
		if err := s.b.GetLog(i, &l); err != nil {
			return fmt.Errorf("seal log entry %d: %w", i, err)
		}
		sealed, err := openLog(&l, false)
		if err != nil {
			return err
		}
		if sealed {
			continue
		}
		batch = append(batch, sealLog(&l))
		if len(batch) == 1024 {
			if err := s.b.StoreLogs(batch); err != nil {
				return err
			}
			batch = batch[:0]
		}
	}
	if len(batch) > 0 {
		if err := s.b.StoreLogs(batch); err != nil {
			return err
		}
	}
	for _, k := range raftStableKeys {
		raw, err := s.b.Get(k)
		if err != nil {
			continue // not set
		}
		if _, sealed, err := openStable(k, raw, false); err != nil {
			return err
		} else if !sealed {
			if err := s.b.Set(k, sealStable(k, raw)); err != nil {
				return err
			}
		}
	}
	return s.b.Set(sealKey, sealStable(sealKey, []byte("1")))
}

func (s *checksumStore) FirstIndex() (uint64, error) { return s.b.FirstIndex() }
func (s *checksumStore) LastIndex() (uint64, error)  { return s.b.LastIndex() }

func (s *checksumStore) GetLog(index uint64, l *raft.Log) error {
	if err := s.b.GetLog(index, l); err != nil {
		if errors.Is(err, raft.ErrLogNotFound) {
			return err
		}
		// A value msgpack cannot decode is damaged too.
		return fmt.Errorf("%w: log entry %d: %v", ErrCorrupt, index, err)
	}
	if l.Index != index {
		return fmt.Errorf("%w: log entry stored under index %d says index %d", ErrCorrupt, index, l.Index)
	}
	_, err := openLog(l, s.strict)
	return err
}

func (s *checksumStore) StoreLog(l *raft.Log) error { return s.StoreLogs([]*raft.Log{l}) }

func (s *checksumStore) StoreLogs(logs []*raft.Log) error {
	sealed := make([]*raft.Log, len(logs))
	for i, l := range logs {
		sealed[i] = sealLog(l)
	}
	return s.b.StoreLogs(sealed)
}

func (s *checksumStore) DeleteRange(min, max uint64) error { return s.b.DeleteRange(min, max) }

func (s *checksumStore) Set(key, val []byte) error { return s.b.Set(key, sealStable(key, val)) }

// Get keeps raft-boltdb's "not found" error: raft compares its text.
func (s *checksumStore) Get(key []byte) ([]byte, error) {
	raw, err := s.b.Get(key)
	if err != nil {
		return nil, err
	}
	val, _, err := openStable(key, raw, s.strict)
	return val, err
}

func (s *checksumStore) SetUint64(key []byte, val uint64) error {
	return s.Set(key, binary.BigEndian.AppendUint64(nil, val))
}

func (s *checksumStore) GetUint64(key []byte) (uint64, error) {
	val, err := s.Get(key)
	if err != nil {
		return 0, err
	}
	if len(val) != 8 {
		return 0, fmt.Errorf("%w: stable key %q holds %d bytes, not a uint64", ErrCorrupt, key, len(val))
	}
	return binary.BigEndian.Uint64(val), nil
}

func (s *checksumStore) Close() error { return s.b.Close() }
