package mpack

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

func Test_Unmarshal_RejectsUnbackedLengths(t *testing.T) {
	type cmd struct {
		T uint8  `msgpack:"t"`
		B []byte `msgpack:"b"`
	}
	type entry struct {
		Cmds []cmd `msgpack:"c"`
	}
	for _, b := range [][]byte{
		{0x81, 0xa1, 'c', 0xdd, 0xff, 0xff, 0xff, 0xff},       // 2^32-1 commands
		{0x81, 0xa1, 'c', 0xdc, 0xff, 0xff, 0x90},             // 65535 commands, one given
		{0x81, 0xa1, 'c', 0x91, 0xdf, 0x7f, 0xff, 0xff, 0xff}, // a map of 2^31-1 entries
		{0x81, 0xa1, 'c', 0x91, 0x81, 0xa1, 'b', 0xc6, 0xff, 0xff, 0xff, 0xff},
		append(bytes.Repeat([]byte{0x91}, MaxDepth+1), 0xc0),
		{0xc1},
		{},
	} {
		var e entry
		if err := Unmarshal(b, &e); !errors.Is(err, ErrMalformed) {
			t.Errorf("% x: %v, want ErrMalformed", b, err)
		}
	}
	good, err := msgpack.Marshal(entry{Cmds: []cmd{{T: 1, B: []byte("x")}, {T: 2}}})
	if err != nil {
		t.Fatal(err)
	}
	var e entry
	if err := Unmarshal(good, &e); err != nil || len(e.Cmds) != 2 || string(e.Cmds[0].B) != "x" {
		t.Fatalf("good entry: %+v %v", e, err)
	}
}

// FuzzCheck compares Check with the msgpack decoder's own Skip: Check
// accepts only what Skip accepts, with the same length, and rejects nothing Skip
// accepts, unless it is nested beyond MaxDepth.
func FuzzCheck(f *testing.F) {
	for _, s := range []string{"\xc0", "\x93\x01\xa1x\xc4\x01y", "\x82\xa1a\x90\xa1b\x80", "\xd4\x01\x00", "\xc7\x02\x05ab",
		"\xdd\xff\xff\xff\xff", "\xc1", "\xdf\x00\x00\x00\x01\xc0", "\xdf\x00\x00\x00\x01\xc0\xc0trailing",
		strings.Repeat("\x91", 64) + "\xc0", strings.Repeat("\x91", 65) + "\xc0", "\xcb\x7f\xf0\x00\x00\x00\x00\x00"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := check(b)
		if errors.Is(err, ErrMalformed) && strings.Contains(err.Error(), "nested deeper") {
			return // Skip would recurse as deep as the input lets it
		}
		r := bytes.NewReader(b)
		skipErr := msgpack.NewDecoder(r).Skip()
		switch {
		case err == nil && skipErr != nil:
			t.Fatalf("Check accepted % x, Skip says %v", b, skipErr)
		case err == nil && n != len(b)-r.Len():
			t.Fatalf("Check read %d bytes, Skip %d", n, len(b)-r.Len())
		case err != nil && skipErr == nil:
			t.Fatalf("Check rejected % x: %v", b, err)
		}
	})
}
