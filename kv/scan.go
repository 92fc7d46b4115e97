package kv

import (
	"bytes"
	"encoding/binary"
	"strconv"
	"strings"
)

func init() {
	commands["scan"] = spec{-2, false, cmdScan}
}

// SCAN walks the keys in byte order. Its cursor is stateless: the first
// seven bytes of the next key to visit and how many of them there are
// (the low byte), so no server state outlives a call and every node
// answers alike. A scan resumes at that prefix: a key present for the
// whole iteration is returned at least once (keys sharing the prefix with
// the resume point may come twice, which SCAN allows), and the cursor
// always moves forward (a page runs past COUNT until the next key's
// prefix differs from the one it started at). 0 starts and ends a scan;
// only the empty key encodes to 0, and it sorts first.

const cursorPrefix = 7

// encodeCursor is the cursor that resumes at key.
func encodeCursor(key []byte) uint64 {
	n := min(len(key), cursorPrefix)
	var b [8]byte
	copy(b[:cursorPrefix], key[:n])
	b[7] = byte(n)
	return binary.BigEndian.Uint64(b[:])
}

// decodeCursor is the key prefix a cursor resumes at.
func decodeCursor(c uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], c)
	n := int(b[7])
	if n > cursorPrefix {
		n = cursorPrefix
	}
	return b[:n]
}

// cmdScan: SCAN cursor [MATCH pattern] [COUNT count] [TYPE type].
func cmdScan(c *ctx, a [][]byte) Value {
	cursor, err := strconv.ParseUint(string(a[1]), 10, 64)
	if err != nil {
		return Err("ERR invalid cursor")
	}
	count := int64(10)
	var pattern []byte
	typ := ""
	for i := 2; i < len(a); i += 2 {
		if i+1 >= len(a) {
			return errSyntax
		}
		switch strings.ToUpper(string(a[i])) {
		case "MATCH":
			pattern = a[i+1]
		case "COUNT":
			n, ok := parseInt(a[i+1])
			if !ok {
				return errNotInt
			}
			if n < 1 {
				return errSyntax
			}
			count = n
		case "TYPE":
			typ = strings.ToLower(string(a[i+1]))
		default:
			return errSyntax
		}
	}
	start := decodeCursor(cursor)
	cur := c.tx.Bucket(bucketMeta).Cursor()
	var keys []Value
	var next uint64
	visited := int64(0)
	for k, v := cur.Seek(dbKey(start)); k != nil; k, v = cur.Next() {
		key := k[1:]
		if visited >= count {
			if e := encodeCursor(key); e != cursor {
				next = e
				break
			}
		}
		visited++
		if len(v) < 9 {
			continue
		}
		if exp := int64(binary.BigEndian.Uint64(v[1:9])); exp != 0 && exp <= c.now {
			continue
		}
		if typ != "" && Type(v[0]).String() != typ {
			continue
		}
		if pattern != nil && !keyMatch(pattern, key) {
			continue
		}
		keys = append(keys, BulkOf(bytes.Clone(key)))
	}
	if keys == nil {
		keys = []Value{}
	}
	return ArrayOf(BulkStr(strconv.FormatUint(next, 10)), ArrayOf(keys...))
}
