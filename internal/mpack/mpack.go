// Package mpack decodes MessagePack that other nodes sent (log entries,
// forwarded commands, replies) without letting a length prefix or the
// nesting decide how much memory is used.
package mpack

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
)

// MaxDepth bounds the nesting of arrays and maps. mcpd's own values nest a
// handful of levels.
const MaxDepth = 64

// ErrMalformed is returned for bytes that are not one complete,
// reasonably nested MessagePack value.
var ErrMalformed = errors.New("malformed msgpack")

// Unmarshal decodes b into v like msgpack.Unmarshal, after Check.
//
// msgpack.Unmarshal allocates a slice at the length its array header
// declares before reading any element, so nine bytes declaring 2^32-1
// commands make it request hundreds of gigabytes and the runtime aborts
// the process (no recover can stop that). Its Skip, used for raw fields,
// recurses once per level of nesting, so deep enough nesting exhausts the
// stack, which is fatal too.
func Unmarshal(b []byte, v any) error {
	if err := Check(b); err != nil {
		return err
	}
	return msgpack.Unmarshal(b, v)
}

// Check walks the first value in b without recursion or allocation per
// element. It fails unless every length it declares is backed by bytes
// (an array element or map entry takes at least one byte, so no decoded
// slice can exceed len(b) elements) and nesting stays within MaxDepth.
func Check(b []byte) error {
	_, err := check(b)
	return err
}

// Len is the length of the first value in b, walked as Check walks it.
func Len(b []byte) (int, error) { return check(b) }

// check is Check, also returning the length of the value.
func check(b []byte) (int, error) {
	var open []int // values still to read in each open array or map
	i := 0
	for {
		if i >= len(b) {
			return 0, fmt.Errorf("%w: truncated at byte %d", ErrMalformed, i)
		}
		c := b[i]
		i++
		var payload, children uint64
		// size reads a big-endian length of w bytes.
		size := func(w int) (uint64, bool) {
			if len(b)-i < w {
				return 0, false
			}
			var n uint64
			switch w {
			case 1:
				n = uint64(b[i])
			case 2:
				n = uint64(binary.BigEndian.Uint16(b[i:]))
			case 4:
				n = uint64(binary.BigEndian.Uint32(b[i:]))
			}
			i += w
			return n, true
		}
		ok := true
		switch {
		case c <= 0x7f || c >= 0xe0, c == 0xc0, c == 0xc2, c == 0xc3:
			// fixint, nil, false, true
		case c <= 0x8f:
			children = 2 * uint64(c&0x0f)
		case c <= 0x9f:
			children = uint64(c & 0x0f)
		case c <= 0xbf:
			payload = uint64(c & 0x1f)
		case c == 0xc4 || c == 0xd9: // bin8, str8
			payload, ok = size(1)
		case c == 0xc5 || c == 0xda: // bin16, str16
			payload, ok = size(2)
		case c == 0xc6 || c == 0xdb: // bin32, str32
			payload, ok = size(4)
		case c == 0xc7, c == 0xc8, c == 0xc9: // ext8/16/32: length, type, data
			payload, ok = size(1 << (c - 0xc7))
			payload++
		case c == 0xca, c == 0xce, c == 0xd2: // float32, uint32, int32
			payload = 4
		case c == 0xcb, c == 0xcf, c == 0xd3: // float64, uint64, int64
			payload = 8
		case c == 0xcc, c == 0xd0:
			payload = 1
		case c == 0xcd, c == 0xd1:
			payload = 2
		case c >= 0xd4 && c <= 0xd8: // fixext 1..16 and the type byte
			payload = 1 + 1<<(c-0xd4)
		case c == 0xdc:
			children, ok = size(2)
		case c == 0xdd:
			children, ok = size(4)
		case c == 0xde:
			children, ok = size(2)
			children *= 2
		case c == 0xdf:
			children, ok = size(4)
			children *= 2
		default: // 0xc1 is never used
			return 0, fmt.Errorf("%w: code %#x at byte %d", ErrMalformed, c, i-1)
		}
		if !ok || payload > uint64(len(b)-i) || children > uint64(len(b)-i) {
			return 0, fmt.Errorf("%w: length at byte %d exceeds the input", ErrMalformed, i-1)
		}
		i += int(payload)
		if children > 0 {
			if len(open) == MaxDepth {
				return 0, fmt.Errorf("%w: nested deeper than %d", ErrMalformed, MaxDepth)
			}
			open = append(open, int(children))
			continue
		}
		// A value ended: close every container it completes.
		for len(open) > 0 {
			open[len(open)-1]--
			if open[len(open)-1] > 0 {
				break
			}
			open = open[:len(open)-1]
		}
		if len(open) == 0 {
			return i, nil
		}
	}
}
