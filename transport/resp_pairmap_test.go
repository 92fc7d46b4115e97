package transport

import (
	"testing"

	"github.com/mcpd/mcpd/kv"
)

// XREAD's reply is a map in RESP3 and an array of [key, entries] pairs in
// RESP2, as Redis answers it.
func Test_AppendValue_PairMap(t *testing.T) {
	v := kv.Value{K: kv.PairMap, A: []kv.Value{
		kv.BulkStr("a"), kv.ArrayOf(kv.Integer(1)),
		kv.BulkStr("b"), kv.ArrayOf(),
	}}
	for _, c := range []struct {
		proto int
		want  string
	}{
		{2, "*2\r\n*2\r\n$1\r\na\r\n*1\r\n:1\r\n*2\r\n$1\r\nb\r\n*0\r\n"},
		{3, "%2\r\n$1\r\na\r\n*1\r\n:1\r\n$1\r\nb\r\n*0\r\n"},
	} {
		if got := string(appendValue(nil, v, c.proto)); got != c.want {
			t.Errorf("RESP%d: %q, want %q", c.proto, got, c.want)
		}
	}
}
