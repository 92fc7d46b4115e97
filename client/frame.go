package client

import (
	"encoding/json"
	"errors"
	"strconv"
)

// frame builds one outgoing request object. Fields are appended in call
// order; raw values (envelopes) are copied in byte for byte, which
// json.Marshal would not guarantee (it compacts and escapes RawMessage).
type frame struct {
	buf []byte
	op  string
	err error
}

func (f *frame) opName() string { return f.op }

func newFrame(op string) *frame {
	f := &frame{buf: make([]byte, 0, 128), op: op}
	f.buf = append(f.buf, `{"op":`...)
	f.buf = appendJSONString(f.buf, op)
	return f
}

func (f *frame) key(k string) {
	f.buf = append(f.buf, ',')
	f.buf = appendJSONString(f.buf, k)
	f.buf = append(f.buf, ':')
}

func (f *frame) str(k, v string) *frame {
	f.key(k)
	f.buf = appendJSONString(f.buf, v)
	return f
}

func (f *frame) int(k string, v int64) *frame {
	f.key(k)
	f.buf = strconv.AppendInt(f.buf, v, 10)
	return f
}

func (f *frame) uint(k string, v uint64) *frame {
	f.key(k)
	f.buf = strconv.AppendUint(f.buf, v, 10)
	return f
}

// raw appends v unchanged; v must be one valid JSON value.
func (f *frame) raw(k string, v []byte) *frame {
	f.key(k)
	f.buf = append(f.buf, v...)
	return f
}

func (f *frame) any(k string, v any) *frame {
	b, err := marshalNoEscape(v)
	if err != nil {
		f.err = errors.Join(f.err, err)
		return f
	}
	return f.raw(k, b)
}

// finish returns the frame with the given rid; the same frame may be
// finished again with another rid for a retry.
func (f *frame) finish(rid int64) ([]byte, error) {
	if f.err != nil {
		return nil, f.err
	}
	out := make([]byte, 0, len(f.buf)+24)
	out = append(out, f.buf...)
	out = append(out, `,"rid":`...)
	out = strconv.AppendInt(out, rid, 10)
	return append(out, '}'), nil
}

// appendJSONString appends s as a JSON string. Valid UTF-8 passes through;
// control characters, quotes and backslashes are escaped; invalid bytes
// become U+FFFD (as encoding/json does).
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b = append(b, '\\', byte(r))
		case r < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[r>>4], hex[r&0xf])
		case r == 0x2028 || r == 0x2029:
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
		default:
			b = append(b, string(r)...)
		}
	}
	return append(b, '"')
}

// inFrame is the part of an incoming server frame the reader needs for
// routing. Result fields of `ok` replies are decoded by the caller.
type inFrame struct {
	Op      string          `json:"op"`
	Rid     json.RawMessage `json:"rid"`
	Code    string          `json:"code"`
	Msg     json.RawMessage `json:"msg"` // error text in err, envelope in pushes
	Unknown bool            `json:"unknown"`

	Consumer   string    `json:"consumer"`
	Sub        string    `json:"sub"`
	Watch      string    `json:"watch"`
	Queue      string    `json:"queue"`
	Topic      string    `json:"topic"`
	Seq        uint64    `json:"seq"`
	Attempt    int       `json:"attempt"`
	LeaseUntil int64     `json:"lease_until"`
	Dead       *DeadInfo `json:"dead"`

	raw []byte // the whole frame
}

// decodeFrame parses one server frame. A field of an unexpected type (an
// `ok` result of some op may reuse a name) does not prevent routing.
func decodeFrame(b []byte) (*inFrame, error) {
	f := &inFrame{raw: b}
	err := json.Unmarshal(b, f)
	var te *json.UnmarshalTypeError
	if err != nil && !errors.As(err, &te) {
		return nil, err
	}
	if f.Op == "" {
		return nil, errors.New("frame without op")
	}
	return f, nil
}

// rid returns the integer rid of the frame, or false when it has none.
func (f *inFrame) rid() (int64, bool) {
	if len(f.Rid) == 0 || f.Rid[0] == '"' || string(f.Rid) == "null" {
		return 0, false
	}
	n, err := strconv.ParseInt(string(f.Rid), 10, 64)
	return n, err == nil
}

// asError converts an `err` frame into *Error.
func (f *inFrame) asError() *Error {
	e := &Error{Code: f.Code, Unknown: f.Unknown}
	if len(f.Msg) > 0 {
		if json.Unmarshal(f.Msg, &e.Msg) != nil {
			e.Msg = string(f.Msg)
		}
	}
	if e.Code == "" {
		e.Code = "internal"
	}
	return e
}

// marshalNoEscape encodes v as compact JSON without HTML escaping.
func marshalNoEscape(v any) ([]byte, error) {
	var w bytesWriter
	enc := json.NewEncoder(&w)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	b := w.b
	if n := len(b); n > 0 && b[n-1] == '\n' {
		b = b[:n-1]
	}
	return b, nil
}

type bytesWriter struct{ b []byte }

func (w *bytesWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}
