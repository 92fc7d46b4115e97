package transport

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
	"unicode/utf8"
)

// FuzzParseRequest drives arbitrary client frames through parseRequest and
// the field readers the ops use. Nothing may panic, every rejection is a
// *fieldError (bad_request), and what is accepted obeys PROTOCOL.md: the
// rid is an integer within ±2^53 or a string of at most 64 bytes of UTF-8,
// and it can be echoed into a reply frame that is valid JSON and UTF-8.
func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		`{"op":"ping","rid":1}`,
		`{"op":"auth","rid":"a-1","agent":"alice","alg":"none"}`,
		`{"op":"enqueue","rid":2,"queue":"jobs","priority":9,"delay_ms":1e3,` +
			`"msg":{"id":"01J","from":"alice","ts":1700000000000,"body":{"n":[1,2,3]}}}`,
		`{"op":"ack","rid":3,"queue":"jobs","seq":2.0,"attempt":1}`,
		`{"op":"queue.declare","rid":4,"queue":"q","max_attempts":5,"backoff_ms":[100,1e3,2.5],"dlq":"q.dlq","max_len":null}`,
		`{"op":"nack","rid":9007199254740992,"queue":"q","seq":1,"attempt":1,"delay_ms":null}`,
		`{"op":"ping","rid":-9007199254740993}`,
		`{"op":"ping","rid":1.0}`,
		`{"op":"ping","rid":1e3}`,
		`{"op":"ping","rid":"` + string(bytes.Repeat([]byte("x"), 65)) + `"}`,
		`{"op":"ping","rid":"\u00e9\u00e9"}`,
		"{\"op\":\"ping\",\"rid\":\"\xff\xfe\"}",
		"{\"op\":\"ping\",\"rid\":\"a\x00b\"}",
		`{"op":"ping","rid":"\ud800"}`,
		`{"op":"ping","rid":null}`,
		`{"op":"ping","rid":[1]}`,
		`{"op":"ping","rid":{"a":1}}`,
		`{"op":7,"rid":1}`,
		`{"rid":1}`,
		`{"op":"ping"}`,
		`{"op":"ping","rid":1,"rid":"dup"}`,
		`{"op":"ping","op":"auth","rid":1}`,
		`{"op":"ack","rid":1,"queue":"q","seq":1e400,"attempt":-0}`,
		`{"op":"ack","rid":1,"queue":"q","seq":123456789012345678901234567890,"attempt":1}`,
		`{"op":"ping","rid":1`,
		`{"op":"ping","rid":1} trailing`,
		`[{"op":"ping","rid":1}]`,
		`null`,
		`"ping"`,
		``,
		"\x00",
		`{"op":"ping","rid":1,"x":` + string(bytes.Repeat([]byte("["), 20000)) + `}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := parseRequest(data)
		var fe *fieldError
		if err != nil && !errors.As(err, &fe) {
			t.Fatalf("error %T %v is not a bad_request field error", err, err)
		}
		var obj map[string]json.RawMessage
		isObject := json.Unmarshal(data, &obj) == nil && obj != nil
		if r == nil {
			if err == nil {
				t.Fatal("nil request without an error")
			}
			return
		}
		if !isObject {
			t.Fatalf("accepted a frame that is not a JSON object: %q", data)
		}
		checkRid(t, r.rid)
		if err == nil {
			var op string
			if json.Unmarshal(obj["op"], &op) != nil || op != r.op {
				t.Fatalf("op %q, frame says %s", r.op, obj["op"])
			}
		}
		// The reply frames echo the rid byte for byte.
		for _, reply := range [][]byte{okFrame(r.rid, "node", "n1", "leader", nil), okFrame(r.rid)} {
			if !json.Valid(reply) || !utf8.Valid(reply) {
				t.Fatalf("reply %q is not valid JSON text", reply)
			}
		}
		// Every field reader copes with every field value.
		for name, v := range r.fields {
			_ = r.has(name)
			if s, err := r.str(name, true); err == nil && string(v) != "null" {
				var want string
				if json.Unmarshal(v, &want) != nil || s != want {
					t.Fatalf("str(%q) = %q from %s", name, s, v)
				}
			}
			for _, lim := range [][3]int64{{0, 9, 0}, {1, 1 << 53, 1}, {-1 << 62, 1 << 62, 0}, {minLeaseMs, maxLeaseMs, defLeaseMs}} {
				n, err := r.int(name, false, lim[0], lim[1], lim[2])
				if err == nil && (n < lim[0] || n > lim[1]) && n != lim[2] {
					t.Fatalf("int(%q) = %d outside [%d, %d] from %s", name, n, lim[0], lim[1], v)
				}
				if err != nil && !errors.As(err, &fe) {
					t.Fatalf("int(%q): error %T", name, err)
				}
			}
			if raw, err := r.raw(name); err != nil || !bytes.Equal(raw, v) {
				t.Fatalf("raw(%q) = %q, %v", name, raw, err)
			}
			_, _, _ = idField(r, name, 'c')
		}
	})
}

// checkRid asserts the PROTOCOL.md rules for an accepted rid.
func checkRid(t *testing.T, rid json.RawMessage) {
	t.Helper()
	if len(rid) == 0 {
		t.Fatal("empty rid accepted")
	}
	if rid[0] == '"' {
		var s string
		if err := json.Unmarshal(rid, &s); err != nil {
			t.Fatalf("rid %q: %v", rid, err)
		}
		if len(s) > 64 || !utf8.Valid(rid) {
			t.Fatalf("rid %q accepted: decodes to %q, not at most 64 bytes of UTF-8", rid, s)
		}
		return
	}
	var n json.Number
	if err := json.Unmarshal(rid, &n); err != nil {
		t.Fatalf("rid %q is neither a string nor a number", rid)
	}
	i, err := n.Int64()
	if err != nil || i < -(1<<53) || i > 1<<53 || bytes.ContainsAny(rid, ".eE") {
		t.Fatalf("rid %q accepted: not an integer literal within ±2^53", rid)
	}
}
