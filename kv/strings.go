package kv

import (
	"bytes"
	"math"
	"strconv"
	"strings"
)

func init() {
	commands["get"] = spec{2, false, cmdGet}
	commands["set"] = spec{-3, true, cmdSet}
	commands["setnx"] = spec{3, true, cmdSetNX}
	commands["getdel"] = spec{2, true, cmdGetDel}
	commands["incr"] = spec{2, true, func(c *ctx, a [][]byte) Value { return c.incrBy(a[1], 1) }}
	commands["decr"] = spec{2, true, func(c *ctx, a [][]byte) Value { return c.incrBy(a[1], -1) }}
	commands["incrby"] = spec{3, true, cmdIncrBy(1)}
	commands["decrby"] = spec{3, true, cmdIncrBy(-1)}
	commands["mget"] = spec{-2, false, cmdMGet}
	commands["mset"] = spec{-3, true, cmdMSet}
}

// getString reads a live string; wrong is set when the key holds another
// type.
func (c *ctx) getString(key []byte) (val []byte, m meta, ok, wrong bool) {
	m, ok = c.lookup(key)
	if !ok {
		return nil, m, false, false
	}
	if m.typ != TypeString {
		return nil, m, false, true
	}
	return c.tx.Bucket(bucketStr).Get(dbKey(key)), m, true, false
}

// putString stores a string value with expiry expire (0: none), replacing
// whatever the key held.
func (c *ctx) putString(key, val []byte, expire int64) {
	old, existed := c.lookup(key)
	if existed && old.typ != TypeString {
		c.del(key, old)
		existed = false
	}
	c.setMeta(key, old, meta{typ: TypeString, expire: expire}, existed)
	must(c.tx.Bucket(bucketStr).Put(dbKey(key), bytes.Clone(val)))
}

func cmdGet(c *ctx, a [][]byte) Value {
	v, _, ok, wrong := c.getString(a[1])
	switch {
	case wrong:
		return errWrongType
	case !ok:
		return NilBulk
	}
	return BulkOf(bytes.Clone(v))
}

// cmdSet: SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL].
func cmdSet(c *ctx, a [][]byte) Value {
	var nx, xx, get, keep bool
	var expire int64
	var unit string
	for i := 3; i < len(a); i++ {
		opt := strings.ToUpper(string(a[i]))
		switch opt {
		case "NX":
			nx = true
		case "XX":
			xx = true
		case "GET":
			get = true
		case "KEEPTTL":
			keep = true
		case "EX", "PX", "EXAT", "PXAT":
			// The same option again replaces the first; another unit
			// is a syntax error.
			if (unit != "" && unit != opt) || i+1 >= len(a) {
				return errSyntax
			}
			n, ok := parseInt(a[i+1])
			if !ok {
				return errNotInt
			}
			unit, i = opt, i+1
			if n <= 0 {
				return errExpireTime("set")
			}
			var ok2 bool
			switch opt {
			case "EX":
				if n > math.MaxInt64/1000 {
					return errExpireTime("set")
				}
				expire, ok2 = addMs(c.now, n*1000)
			case "PX":
				expire, ok2 = addMs(c.now, n)
			case "EXAT":
				if n > math.MaxInt64/1000 {
					return errExpireTime("set")
				}
				expire, ok2 = n*1000, true
			case "PXAT":
				expire, ok2 = n, true
			}
			if !ok2 {
				return errExpireTime("set")
			}
		default:
			return errSyntax
		}
	}
	if (nx && xx) || (keep && unit != "") {
		return errSyntax
	}
	old, m, exists, wrong := c.getString(a[1])
	if wrong && get {
		return errWrongType
	}
	exists = exists || wrong
	var prev Value = NilBulk
	if get && exists {
		prev = BulkOf(bytes.Clone(old))
	}
	if (nx && exists) || (xx && !exists) {
		if get {
			return prev
		}
		return NilBulk
	}
	if keep && exists && !wrong {
		expire = m.expire
	}
	if expire != 0 && expire <= c.now {
		// An absolute time in the past: the key is set and gone at once.
		if mm, ok := c.lookup(a[1]); ok {
			c.del(a[1], mm)
		}
	} else {
		c.putString(a[1], a[2], expire)
	}
	if get {
		return prev
	}
	return OK
}

func cmdSetNX(c *ctx, a [][]byte) Value {
	if _, ok := c.lookup(a[1]); ok {
		return Integer(0)
	}
	c.putString(a[1], a[2], 0)
	return Integer(1)
}

func cmdGetDel(c *ctx, a [][]byte) Value {
	v, m, ok, wrong := c.getString(a[1])
	switch {
	case wrong:
		return errWrongType
	case !ok:
		return NilBulk
	}
	out := BulkOf(bytes.Clone(v))
	c.del(a[1], m)
	return out
}

func cmdIncrBy(sign int64) func(c *ctx, a [][]byte) Value {
	return func(c *ctx, a [][]byte) Value {
		n, ok := parseInt(a[2])
		if !ok {
			return errNotInt
		}
		if sign < 0 {
			if n == math.MinInt64 {
				return Err("ERR decrement would overflow")
			}
			n = -n
		}
		return c.incrBy(a[1], n)
	}
}

func (c *ctx) incrBy(key []byte, by int64) Value {
	v, m, ok, wrong := c.getString(key)
	if wrong {
		return errWrongType
	}
	var cur int64
	if ok {
		n, valid := parseInt(v)
		if !valid {
			return errNotInt
		}
		cur = n
	}
	if (by > 0 && cur > math.MaxInt64-by) || (by < 0 && cur < math.MinInt64-by) {
		return errOverflow
	}
	cur += by
	expire := int64(0)
	if ok {
		expire = m.expire
	}
	c.putString(key, []byte(strconv.FormatInt(cur, 10)), expire)
	return Integer(cur)
}

func cmdMGet(c *ctx, a [][]byte) Value {
	out := make([]Value, 0, len(a)-1)
	for _, k := range a[1:] {
		v, _, ok, _ := c.getString(k)
		if ok {
			out = append(out, BulkOf(bytes.Clone(v)))
		} else {
			out = append(out, NilBulk)
		}
	}
	return ArrayOf(out...)
}

func cmdMSet(c *ctx, a [][]byte) Value {
	if len(a)%2 != 1 {
		return ErrArity("mset")
	}
	for i := 1; i < len(a); i += 2 {
		c.putString(a[i], a[i+1], 0)
	}
	return OK
}
