package main

import (
	"bytes"
	"encoding/json"
	"io"
	"reflect"
	"strings"
	"testing"
)

// The CLI's JSON has <, > and & as themselves, also inside JSON it got
// already encoded, and ends in a newline.
func TestPrintJSON(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`"a\u003eb\u003cc\u0026d"`, `"a>b<c&d"`},
		{`"A\u003E"`, `"A>"`},
		{`"kept: \\u003e \u00e9 \n \" \\"`, `"kept: \\u003e \u00e9 \n \" \\"`},
		{`"\\\u003e"`, `"\\>"`},
		{`{"k":"v"}`, `{"k":"v"}`},
	} {
		if got := string(unescapeHTML([]byte(tc.in))); got != tc.want {
			t.Errorf("unescapeHTML(%s) = %s, want %s", tc.in, got, tc.want)
		}
		var a, b any
		if json.Unmarshal([]byte(tc.in), &a) != nil || json.Unmarshal([]byte(tc.want), &b) != nil || !reflect.DeepEqual(a, b) {
			t.Errorf("%s and %s are not the same JSON value", tc.in, tc.want)
		}
	}
	var out bytes.Buffer
	v := map[string]any{"glob": "rhythm.>", "raw": json.RawMessage(`{"q":"a\u0026b"}`)}
	if err := printJSON(&out, v); err != nil || out.String() != `{"glob":"rhythm.>","raw":{"q":"a&b"}}`+"\n" {
		t.Fatalf("printJSON: %q %v", out.String(), err)
	}
	out.Reset()
	if err := printRawJSON(&out, []byte("{\n  \"allow\": [\n    \"rhythm.\\u003e\"\n  ]\n}")); err != nil ||
		out.String() != "{\n  \"allow\": [\n    \"rhythm.>\"\n  ]\n}\n" {
		t.Fatalf("printRawJSON: %q %v", out.String(), err)
	}
	out.Reset()
	if err := printRawJSON(&out, []byte("[]\n")); err != nil || out.String() != "[]\n" {
		t.Fatalf("printRawJSON of an answer with its newline: %q %v", out.String(), err)
	}
}

// agent show and agent list --json print an ACL glob as it was given,
// and end in a newline.
func TestCLIAgentShowJSON(t *testing.T) {
	n := startCLINode(t)
	if _, err := run(t, agentAdd, n.asOperator("cipher", "--allow-enqueue", "rhythm.>")); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"show", "cipher"}, {"list", "--json"}} {
		out, err := run(t, func(a []string, w io.Writer) error {
			if a[0] == "show" {
				return agentShow(a[1:], w)
			}
			return agentList(a[1:], w)
		}, n.asOperator(args...))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, `"rhythm.>"`) || strings.Contains(out, `\u003e`) || !strings.HasSuffix(out, "}\n") || !json.Valid([]byte(out)) {
			t.Fatalf("agent %s:\n%s", strings.Join(args, " "), out)
		}
	}
}
