package client

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// Seeds shared by the targets that read server frames and envelopes.
var frameSeeds = []string{
	`{"op":"hello","node":"n1","max_frame":1048576,"nonce":"abc"}`,
	`{"op":"ok","rid":1,"agent":"alice"}`,
	`{"op":"ok","rid":7,"seq":3,"dup":false}`,
	`{"code":"unavailable","msg":"no leader","op":"err","rid":5,"unknown":true}`,
	`{"code":"bad_request","msg":"frame is not a JSON object","op":"err"}`,
	`{"op":"err","rid":"x","code":7,"msg":{"nested":true}}`,
	`{"op":"deliver","consumer":"c1","queue":"jobs.dlq","seq":3,"attempt":1,"lease_until":99,` +
		`"dead":{"queue":"jobs","seq":7,"reason":"rejected: bad","attempts":2},` +
		`"msg":{"id":"01J","from":"alice","ts":1700000000000,"body":{"n":123456789012345678901234}}}`,
	`{"op":"event","sub":"s4","topic":"a.b","msg":{"id":"e1","from":"bob","ts":1,"body":null}}`,
	`{"op":"deliver","consumer":"c1","seq":-1,"attempt":1e3,"lease_until":1.5}`,
	`{"op":"deliver","consumer":"c1","seq":18446744073709551616,"dead":[]}`,
	`{"op":"ok","rid":9223372036854775808}`,
	`{"op":"ok","rid":-0}`,
	`{"op":"ok","rid":null}`,
	`{"op":"ok","op":"err","rid":1,"rid":2}`,
	`{"OP":"ok","Rid":3}`,
	`{"op":"","rid":1}`,
	`{"op":null}`,
	`{"op":1}`,
	"{\"op\":\"ok\xff\",\"rid\":1}",
	"{\"op\":\"ok\",\"rid\":1,\"x\":\"\x00\"}",
	`{"op":"ok","rid":1,"x":` + strings.Repeat("[", 10001) + strings.Repeat("]", 10001) + `}`,
	`{"op":"ok","rid":1`,
	`{"op":"ok"} {"op":"err"}`,
	`[]`,
	`null`,
	``,
}

var envelopeSeeds = []string{
	`{"id":"01JD0Z7K2M9P4Q1R8S3T5V6W7X","from":"alice","ts":1700000000000,"intent":"x","parent":"p","body":{"task":"t"}}`,
	`{"id":"1","from":"a","ts":1,"body":null,"sig":{"alg":"none"}}`,
	`{"id":"1","from":"a","ts":1}`,
	`{"id":"1","from":"a","ts":1.5}`,
	`{"id":"1","from":"a","ts":"1"}`,
	`{"id":"1","from":"a","ts":99999999999999999999}`,
	`{"id":"","from":"a","ts":1}`,
	`{"id":"1","from":"","ts":1}`,
	`{"ID":"1","From":"a","TS":1}`,
	`{"id":"1","id":"2","from":"a","ts":1}`,
	`{"id":1,"from":"a","ts":1}`,
	"{\"id\":\"\xff\",\"from\":\"a\",\"ts\":1}",
	`{"id":"\ud800","from":"a","ts":1,"body":"<&>"}`,
	`{"id":"1","from":"a","ts":1,"body":` + strings.Repeat("[", 200) + strings.Repeat("]", 200) + `}`,
	`{"id":"1","from":"a","ts":1,"body":{"a":1}`,
	`{"id":"1","from":"a","ts":1} x`,
	`null`,
	`[]`,
	``,
}

// FuzzDecodeFrame reads arbitrary server frames as the client's reader
// does: decodeFrame never panics, an accepted frame has an op and keeps
// its bytes, and the accessors used by dispatch (rid, asError) cope with
// whatever the fields hold.
func FuzzDecodeFrame(f *testing.F) {
	for _, s := range frameSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := decodeFrame(b)
		if err != nil {
			if fr != nil {
				t.Fatal("frame returned with an error")
			}
			return
		}
		if fr.Op == "" || !bytes.Equal(fr.raw, b) {
			t.Fatalf("accepted frame op %q raw %q", fr.Op, fr.raw)
		}
		if !json.Valid(b) {
			t.Fatalf("accepted invalid JSON %q", b)
		}
		if rid, ok := fr.rid(); ok {
			var n json.Number
			if json.Unmarshal(fr.Rid, &n) != nil || n.String() != string(fr.Rid) {
				t.Fatalf("rid %d from %q", rid, fr.Rid)
			}
		}
		if e := fr.asError(); e.Code == "" {
			t.Fatal("error without code")
		} else {
			_ = e.Error()
		}
	})
}

// FuzzParseEnvelope checks client.ParseEnvelope: no panic, an accepted
// envelope has an id and a sender, and encoding it again gives an
// envelope that parses to the same values.
func FuzzParseEnvelope(f *testing.F) {
	for _, s := range envelopeSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		e, err := ParseEnvelope(raw)
		if err != nil {
			if e != nil {
				t.Fatal("envelope returned with an error")
			}
			return
		}
		if e.ID == "" || e.From == "" {
			t.Fatalf("accepted envelope without id or from: %+v", e)
		}
		if envelopeID(raw) != e.ID {
			t.Fatalf("envelopeID %q, ParseEnvelope %q", envelopeID(raw), e.ID)
		}
		again, err := json.Marshal(e)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", e, err)
		}
		e2, err := ParseEnvelope(again)
		if err != nil {
			t.Fatalf("re-encoded envelope %s rejected: %v", again, err)
		}
		if e.ID != e2.ID || e.From != e2.From || e.TS != e2.TS || e.Intent != e2.Intent || e.Parent != e2.Parent {
			t.Fatalf("round trip changed the envelope:\n%+v\n%+v", e, e2)
		}
		if !sameJSON(t, e.Body, e2.Body) || !sameJSON(t, e.Sig, e2.Sig) {
			t.Fatalf("round trip changed body or sig:\n%s %s\n%s %s", e.Body, e.Sig, e2.Body, e2.Sig)
		}
	})
}

// sameJSON compares two raw values by meaning (absent counts as null).
func sameJSON(t *testing.T, a, b json.RawMessage) bool {
	t.Helper()
	decode := func(r json.RawMessage) any {
		if len(r) == 0 {
			return nil
		}
		var v any
		d := json.NewDecoder(bytes.NewReader(r))
		d.UseNumber()
		if err := d.Decode(&v); err != nil {
			t.Fatalf("decode %q: %v", r, err)
		}
		return v
	}
	return reflect.DeepEqual(decode(a), decode(b))
}

// FuzzFrameEncode checks the request builder: whatever strings and raw
// envelope it is given, the frame is valid JSON that reads back to the
// same values (invalid UTF-8 becomes U+FFFD, as in encoding/json).
func FuzzFrameEncode(f *testing.F) {
	f.Add("enqueue", "queue", "jobs", []byte(`{"id":"1","from":"a","ts":1}`), int64(1))
	f.Add("op\"\\", "k\u2028", "bad\xffbyte\x00", []byte(`{"a" : "<&>"}`), int64(-1<<63))
	f.Fuzz(func(t *testing.T, op, k, v string, msg []byte, rid int64) {
		if !json.Valid(msg) {
			msg = []byte("null")
		}
		b, err := newFrame(op).str(k, v).raw("msg", msg).int("n", rid).finish(rid)
		if err != nil {
			t.Fatal(err)
		}
		var got map[string]json.RawMessage
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("frame %q: %v", b, err)
		}
		// Each invalid byte reads back as one U+FFFD.
		valid := func(s string) string { return string([]rune(s)) }
		var gotOp, gotV string
		ks := valid(k)
		if ks != "op" {
			if err := json.Unmarshal(got["op"], &gotOp); err != nil || gotOp != valid(op) {
				t.Fatalf("op %q read back as %q", op, gotOp)
			}
		}
		if ks != "op" && ks != "msg" && ks != "n" && ks != "rid" {
			if err := json.Unmarshal(got[ks], &gotV); err != nil || gotV != valid(v) {
				t.Fatalf("%q=%q read back as %q (%v)", k, v, got[ks], err)
			}
		}
		if !bytes.Contains(b, msg) {
			t.Fatalf("msg %q not copied byte for byte into %q", msg, b)
		}
	})
}
