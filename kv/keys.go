package kv

import (
	"bytes"
	"encoding/binary"
	"math"
	"strings"
)

func init() {
	commands["del"] = spec{-2, true, cmdDel}
	commands["unlink"] = spec{-2, true, cmdDel}
	commands["exists"] = spec{-2, false, cmdExists}
	commands["type"] = spec{2, false, cmdType}
	commands["keys"] = spec{2, false, cmdKeys}
	commands["dbsize"] = spec{1, false, cmdDBSize}
	commands["expire"] = spec{-3, true, cmdExpire("expire", 1000)}
	commands["pexpire"] = spec{-3, true, cmdExpire("pexpire", 1)}
	commands["ttl"] = spec{2, false, cmdTTL(1000)}
	commands["pttl"] = spec{2, false, cmdTTL(1)}
	commands["persist"] = spec{2, true, cmdPersist}
}

func cmdDel(c *ctx, a [][]byte) Value {
	var n int64
	for _, k := range a[1:] {
		if m, ok := c.lookup(k); ok {
			c.del(k, m)
			n++
		}
	}
	return Integer(n)
}

func cmdExists(c *ctx, a [][]byte) Value {
	var n int64
	for _, k := range a[1:] {
		if _, ok := c.lookup(k); ok {
			n++
		}
	}
	return Integer(n)
}

func cmdType(c *ctx, a [][]byte) Value {
	m, ok := c.lookup(a[1])
	if !ok {
		return Str("none")
	}
	return Str(m.typ.String())
}

// liveKeys calls fn for every key that has not expired, in key order.
func (c *ctx) liveKeys(fn func(key []byte)) {
	cur := c.tx.Bucket(bucketMeta).Cursor()
	for k, v := cur.First(); k != nil; k, v = cur.Next() {
		if len(v) != 9 {
			continue
		}
		if exp := int64(binary.BigEndian.Uint64(v[1:])); exp != 0 && exp <= c.now {
			continue
		}
		fn(k[1:])
	}
}

func cmdKeys(c *ctx, a [][]byte) Value {
	var out []Value
	c.liveKeys(func(k []byte) {
		if keyMatch(a[1], k) {
			out = append(out, BulkOf(bytes.Clone(k)))
		}
	})
	return Value{K: Array, A: out}
}

func cmdDBSize(c *ctx, a [][]byte) Value {
	var n int64
	c.liveKeys(func([]byte) { n++ })
	return Integer(n)
}

// cmdExpire: EXPIRE key seconds [NX|XX|GT|LT] (PEXPIRE in ms).
func cmdExpire(name string, unit int64) func(c *ctx, a [][]byte) Value {
	return func(c *ctx, a [][]byte) Value {
		n, ok := parseInt(a[2])
		if !ok {
			return errNotInt
		}
		var nx, xx, gt, lt bool
		for _, o := range a[3:] {
			switch strings.ToUpper(string(o)) {
			case "NX":
				nx = true
			case "XX":
				xx = true
			case "GT":
				gt = true
			case "LT":
				lt = true
			default:
				return Err("ERR Unsupported option " + string(o))
			}
		}
		if nx && (xx || gt || lt) {
			return Err("ERR NX and XX, GT or LT options at the same time are not compatible")
		}
		if gt && lt {
			return Err("ERR GT and LT options at the same time are not compatible")
		}
		if unit > 1 && (n > math.MaxInt64/unit || n < math.MinInt64/unit) {
			return errExpireTime(name)
		}
		at, ok := addMs(c.now, n*unit)
		if !ok || (n < 0 && c.now+n*unit > c.now) {
			return errExpireTime(name)
		}
		m, exists := c.lookup(a[1])
		if !exists {
			return Integer(0)
		}
		switch {
		case nx && m.expire != 0, xx && m.expire == 0:
			return Integer(0)
		case gt && (m.expire == 0 || at <= m.expire):
			return Integer(0)
		case lt && m.expire != 0 && at >= m.expire:
			return Integer(0)
		}
		if at <= c.now {
			c.del(a[1], m)
			return Integer(1)
		}
		c.setMeta(a[1], m, meta{typ: m.typ, expire: at}, true)
		return Integer(1)
	}
}

func cmdTTL(unit int64) func(c *ctx, a [][]byte) Value {
	return func(c *ctx, a [][]byte) Value {
		m, ok := c.lookup(a[1])
		switch {
		case !ok:
			return Integer(-2)
		case m.expire == 0:
			return Integer(-1)
		}
		left := m.expire - c.now
		if unit > 1 {
			return Integer((left + unit/2) / unit)
		}
		return Integer(left)
	}
}

func cmdPersist(c *ctx, a [][]byte) Value {
	m, ok := c.lookup(a[1])
	if !ok || m.expire == 0 {
		return Integer(0)
	}
	c.setMeta(a[1], m, meta{typ: m.typ}, true)
	return Integer(1)
}

// keyMatch is KEYS's match: the pattern * takes every key, the empty
// one included; any other pattern is stringMatch.
func keyMatch(p, key []byte) bool {
	return string(p) == "*" || stringMatch(p, key)
}

// stringMatch is globMatch as Redis applies it to a whole string: the
// empty string matches only the empty pattern ("*" and "**" do not).
func stringMatch(p, s []byte) bool {
	if len(s) == 0 {
		return len(p) == 0
	}
	return globMatch(p, s)
}

// globMatch is Redis's pattern match: '*', '?', '[...]' with ranges and
// '^' negation, and '\' escapes.
func globMatch(p, s []byte) bool {
	for len(p) > 0 {
		switch p[0] {
		case '*':
			for len(p) > 1 && p[1] == '*' {
				p = p[1:]
			}
			if len(p) == 1 {
				return true
			}
			for i := 0; i <= len(s); i++ {
				if globMatch(p[1:], s[i:]) {
					return true
				}
			}
			return false
		case '?':
			if len(s) == 0 {
				return false
			}
			s = s[1:]
		case '[':
			if len(s) == 0 {
				return false
			}
			p = p[1:]
			not := len(p) > 0 && p[0] == '^'
			if not {
				p = p[1:]
			}
			match := false
			for len(p) > 0 && p[0] != ']' {
				switch {
				case p[0] == '\\' && len(p) >= 2:
					p = p[1:]
					match = match || p[0] == s[0]
				case len(p) >= 3 && p[1] == '-':
					lo, hi := p[0], p[2]
					if lo > hi {
						lo, hi = hi, lo
					}
					match = match || (s[0] >= lo && s[0] <= hi)
					p = p[2:]
				default:
					match = match || p[0] == s[0]
				}
				p = p[1:]
			}
			if not {
				match = !match
			}
			if !match {
				return false
			}
			s = s[1:]
			if len(p) == 0 {
				return len(s) == 0
			}
		case '\\':
			if len(p) >= 2 {
				p = p[1:]
			}
			fallthrough
		default:
			if len(s) == 0 || p[0] != s[0] {
				return false
			}
			s = s[1:]
		}
		p = p[1:]
	}
	return len(s) == 0
}
