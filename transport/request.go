package transport

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"unicode/utf8"
)

// request is a decoded client frame: its op, its rid (kept as raw JSON so
// it is echoed with the same type) and its other fields, still raw.
type request struct {
	op     string
	rid    json.RawMessage
	fields map[string]json.RawMessage
}

// fieldError is a missing or mistyped field: bad_request.
type fieldError struct{ msg string }

func (e *fieldError) Error() string { return e.msg }

func badField(format string, args ...any) error { return &fieldError{fmt.Sprintf(format, args...)} }

// parseRequest decodes a frame. A frame that is not a JSON object yields
// (nil, err) and gets an error without rid; a frame without a valid rid
// likewise.
func parseRequest(data []byte) (*request, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(data, &fields); err != nil || fields == nil {
		return nil, badField("frame is not a JSON object")
	}
	rid, ok := fields["rid"]
	if !ok {
		return nil, badField("rid is required")
	}
	if !validRid(rid) {
		return nil, badField("rid must be an integer within ±2^53 or a string of at most 64 bytes")
	}
	r := &request{rid: rid, fields: fields}
	opRaw, ok := fields["op"]
	if !ok {
		return r, badField("op is required")
	}
	if err := json.Unmarshal(opRaw, &r.op); err != nil {
		return r, badField("op must be a string")
	}
	return r, nil
}

// validRid reports whether raw is a rid PROTOCOL.md allows. A string rid
// is echoed byte for byte in text frames, so its bytes must be UTF-8:
// json.Unmarshal would quietly turn invalid bytes into U+FFFD.
func validRid(raw json.RawMessage) bool {
	if len(raw) > 0 && raw[0] == '"' {
		var s string
		return utf8.Valid(raw) && json.Unmarshal(raw, &s) == nil && len(s) <= 64
	}
	if bytes.ContainsAny(raw, ".eE") {
		return false
	}
	n, err := strconv.ParseInt(string(raw), 10, 64)
	return err == nil && n >= -(1<<53) && n <= 1<<53
}

func (r *request) has(name string) bool {
	v, ok := r.fields[name]
	return ok && string(v) != "null"
}

// str reads a string field.
func (r *request) str(name string, required bool) (string, error) {
	v, ok := r.fields[name]
	if !ok || string(v) == "null" {
		if required {
			return "", badField("%s is required", name)
		}
		return "", nil
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		return "", badField("%s must be a string", name)
	}
	return s, nil
}

// int reads an integer field within [lo, hi]; def when absent.
func (r *request) int(name string, required bool, lo, hi, def int64) (int64, error) {
	v, ok := r.fields[name]
	if !ok || string(v) == "null" {
		if required {
			return 0, badField("%s is required", name)
		}
		return def, nil
	}
	n, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil {
		// Accept integral numbers written with a fraction or exponent.
		f, ferr := strconv.ParseFloat(string(v), 64)
		if ferr != nil || f != math.Trunc(f) || math.Abs(f) > 1<<53 {
			return 0, badField("%s must be an integer", name)
		}
		n = int64(f)
	}
	if n < lo || n > hi {
		return 0, badField("%s must be between %d and %d", name, lo, hi)
	}
	return n, nil
}

// raw reads a field that must be present, unparsed.
func (r *request) raw(name string) (json.RawMessage, error) {
	v, ok := r.fields[name]
	if !ok {
		return nil, badField("%s is required", name)
	}
	return v, nil
}
