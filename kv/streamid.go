package kv

import (
	"bytes"
	"encoding/binary"
	"math"
	"strconv"
	"strings"
)

// streamID is an entry's id: milliseconds and a sequence number.
type streamID struct{ ms, seq uint64 }

var maxStreamID = streamID{math.MaxUint64, math.MaxUint64}

func (a streamID) cmp(b streamID) int {
	switch {
	case a.ms != b.ms:
		if a.ms < b.ms {
			return -1
		}
		return 1
	case a.seq < b.seq:
		return -1
	case a.seq > b.seq:
		return 1
	}
	return 0
}

func (a streamID) String() string {
	return strconv.FormatUint(a.ms, 10) + "-" + strconv.FormatUint(a.seq, 10)
}

// incr returns the next id; ok is false past the last possible one.
func (a streamID) incr() (streamID, bool) {
	switch {
	case a.seq != math.MaxUint64:
		return streamID{a.ms, a.seq + 1}, true
	case a.ms != math.MaxUint64:
		return streamID{a.ms + 1, 0}, true
	}
	return streamID{}, false
}

// decr returns the previous id; ok is false before 0-0.
func (a streamID) decr() (streamID, bool) {
	switch {
	case a.seq != 0:
		return streamID{a.ms, a.seq - 1}, true
	case a.ms != 0:
		return streamID{a.ms - 1, math.MaxUint64}, true
	}
	return maxStreamID, false
}

func (a streamID) append(b []byte) []byte {
	return binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(b, a.ms), a.seq)
}

func readID(b []byte) streamID {
	return streamID{binary.BigEndian.Uint64(b), binary.BigEndian.Uint64(b[8:])}
}

// cstr is an argument as Redis's C string functions see it: up to its
// first NUL byte.
func cstr(b []byte) []byte {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return b[:i]
	}
	return b
}

// isOpt reports whether an argument is the option name (any case).
func isOpt(b []byte, name string) bool { return strings.EqualFold(string(cstr(b)), name) }

// parseU64 reads a number part of an id as Redis does: a plain decimal,
// or failing that what C's strtoull accepts in full (leading white
// space, a sign, leading zeros; a '-' negates modulo 2^64).
func parseU64(s []byte) (uint64, bool) {
	if n, ok := parseInt(s); ok {
		return uint64(n), n >= 0
	}
	i := 0
	for i < len(s) && (s[i] == ' ' || (s[i] >= '\t' && s[i] <= '\r')) {
		i++
	}
	neg := false
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		neg = s[i] == '-'
		i++
	}
	if i == len(s) {
		return 0, false
	}
	var n uint64
	for ; i < len(s); i++ {
		d := s[i] - '0'
		if d > 9 || n > (math.MaxUint64-uint64(d))/10 {
			return 0, false
		}
		n = n*10 + uint64(d)
	}
	if neg {
		n = -n
	}
	return n, true
}

// parseStreamID reads an id argument: "ms-seq", "ms" (seq missingSeq),
// and unless strict "-" and "+". With autoSeq, "ms-*" is accepted and
// seqGiven reports whether the sequence was given.
func parseStreamID(arg []byte, missingSeq uint64, strict, autoSeq bool) (id streamID, seqGiven bool, ok bool) {
	if len(arg) > 127 {
		return id, false, false
	}
	s := cstr(arg)
	if len(s) == 1 && (s[0] == '-' || s[0] == '+') {
		if strict {
			return id, false, false
		}
		if s[0] == '-' {
			return streamID{}, true, true
		}
		return maxStreamID, true, true
	}
	msPart, seqPart, dash := bytes.Cut(s, []byte("-"))
	ms, ok := parseU64(msPart)
	if !ok {
		return id, false, false
	}
	seq, seqGiven := missingSeq, true
	if dash {
		if autoSeq && len(seqPart) == 1 && seqPart[0] == '*' {
			seq, seqGiven = 0, false
		} else if seq, ok = parseU64(seqPart); !ok {
			return id, false, false
		}
	}
	return streamID{ms, seq}, seqGiven, true
}

// parseRangeID reads an XRANGE bound: an id, "-", "+", or "(" and a
// strict id for an exclusive bound.
func parseRangeID(arg []byte, missingSeq uint64) (id streamID, excl, ok bool) {
	if len(arg) > 1 && arg[0] == '(' {
		id, _, ok = parseStreamID(arg[1:], missingSeq, true, false)
		return id, true, ok
	}
	id, _, ok = parseStreamID(arg, missingSeq, false, false)
	return id, false, ok
}
