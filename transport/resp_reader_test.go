package transport

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestSplitInline(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
		err  string
	}{
		{"PING", []string{"PING"}, ""},
		{"   set  k   v  ", []string{"set", "k", "v"}, ""},
		{`ECHO "a b"`, []string{"ECHO", "a b"}, ""},
		{`ECHO 'a b'`, []string{"ECHO", "a b"}, ""},
		{`ECHO "\x41\n\t\\\""`, []string{"ECHO", "A\n\t\\\""}, ""},
		{`ECHO 'it\'s'`, []string{"ECHO", "it's"}, ""},
		{`ECHO ""`, []string{"ECHO", ""}, ""},
		{`a"b c"`, []string{"ab c"}, ""},
		{`ECHO "abc`, nil, "unbalanced quotes in request"},
		{`ECHO 'abc`, nil, "unbalanced quotes in request"},
		{`ECHO "a"b`, nil, "unbalanced quotes in request"},
		{"", nil, ""},
	} {
		got, err := splitInline([]byte(tc.in))
		var pe *respProtoError
		if tc.err != "" {
			if !errors.As(err, &pe) || pe.msg != tc.err {
				t.Errorf("%q: %v, want %s", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || len(got) != len(tc.want) {
			t.Errorf("%q: %q %v, want %q", tc.in, got, err, tc.want)
			continue
		}
		for i := range got {
			if string(got[i]) != tc.want[i] {
				t.Errorf("%q: %q, want %q", tc.in, got, tc.want)
			}
		}
	}
}

func TestRESPReaderFraming(t *testing.T) {
	in := "*0\r\n*-1\r\n\r\n*2\r\n$4\r\nECHO\r\n$3\r\nabc\r\nPING\r\n*1\r\n$4\r\nPING\r\n"
	r := newRESPReader(strings.NewReader(in), 1<<20)
	var got []string
	for {
		args, err := r.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(bytes.Join(args, []byte(" "))))
	}
	if strings.Join(got, "|") != "ECHO abc|PING|PING" {
		t.Fatalf("commands %q", got)
	}
	for in, want := range map[string]string{
		"*x\r\n":                   "invalid multibulk length",
		"*1\r\n$x\r\n":             "invalid bulk length",
		"*1\r\n$-1\r\n":            "invalid bulk length",
		"*1\r\n+PING\r\n":          "expected '$', got '+'",
		"*1\r\n$2000000\r\n":       "invalid bulk length",
		"*9999999999\r\n":          "invalid multibulk length",
		strings.Repeat("a", 70000): "too big inline request",
	} {
		_, err := newRESPReader(strings.NewReader(in), 1<<20).next()
		var pe *respProtoError
		if !errors.As(err, &pe) || pe.msg != want {
			t.Errorf("%.20q: %v, want %s", in, err, want)
		}
	}
}

// FuzzRESPReader: any bytes give commands or an error, never a panic,
// and never an argument beyond the limit.
func FuzzRESPReader(f *testing.F) {
	for _, s := range []string{
		"*2\r\n$4\r\nECHO\r\n$3\r\nabc\r\n", "PING\r\n", `SET k "a\x41 b"` + "\r\n", "*1\r\n$-1\r\n",
		"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$99999999\r\n", "*0\r\n*-1\r\n", "'unbalanced\r\n", "*1\r\n$4\r\nPI",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		r := newRESPReader(bytes.NewReader(in), 4096)
		for range 1000 {
			args, err := r.next()
			if err != nil {
				return
			}
			total := 0
			for _, a := range args {
				total += len(a)
			}
			if total > 4096+maxInline {
				t.Fatalf("a command of %d bytes passed a 4096-byte limit", total)
			}
		}
	})
}
