package systemtest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// This file holds the pieces of the Redis differential test that need no
// server: a raw RESP client that keeps every reply's exact type, the
// rendering used to compare replies, and the parser of the command scripts
// under testdata/redis/.

// respReply is one reply as the server framed it. Kind is the RESP type
// byte: + - : $ * for RESP2, and _ , # ( = % ~ > | added by RESP3. A null
// bulk ($-1) and a null array (*-1) keep their kind with Null set; RESP3's
// null is Kind '_'. Maps (%) and attributes (|) hold keys and values
// alternately in Elems.
type respReply struct {
	Kind  byte
	Null  bool
	Str   string // simple, error, bulk, verbatim, double, big number, boolean
	Int   int64
	Elems []respReply
}

// maxRESPLen bounds one bulk string or aggregate the client accepts.
const maxRESPLen = 64 << 20

// readRESP reads one reply.
func readRESP(r *bufio.Reader) (respReply, error) {
	line, err := readRESPLine(r)
	if err != nil {
		return respReply{}, err
	}
	if len(line) == 0 {
		return respReply{}, errors.New("empty reply line")
	}
	kind, rest := line[0], line[1:]
	switch kind {
	case '+', '-', ',', '(':
		return respReply{Kind: kind, Str: rest}, nil
	case '#':
		if rest != "t" && rest != "f" {
			return respReply{}, fmt.Errorf("bad boolean %q", line)
		}
		return respReply{Kind: kind, Str: rest}, nil
	case '_':
		if rest != "" {
			return respReply{}, fmt.Errorf("bad null %q", line)
		}
		return respReply{Kind: kind}, nil
	case ':':
		n, err := strconv.ParseInt(rest, 10, 64)
		if err != nil {
			return respReply{}, fmt.Errorf("bad integer %q", line)
		}
		return respReply{Kind: kind, Int: n}, nil
	case '$', '=':
		n, err := strconv.Atoi(rest)
		if err != nil || n < -1 || n > maxRESPLen {
			return respReply{}, fmt.Errorf("bad length %q", line)
		}
		if n == -1 && kind == '$' {
			return respReply{Kind: kind, Null: true}, nil
		}
		if n < 0 {
			return respReply{}, fmt.Errorf("bad length %q", line)
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return respReply{}, err
		}
		if buf[n] != '\r' || buf[n+1] != '\n' {
			return respReply{}, fmt.Errorf("%c%d payload not followed by CRLF", kind, n)
		}
		return respReply{Kind: kind, Str: string(buf[:n])}, nil
	case '*', '~', '>', '%', '|':
		n, err := strconv.Atoi(rest)
		if err != nil || n < -1 || n > maxRESPLen {
			return respReply{}, fmt.Errorf("bad length %q", line)
		}
		if n == -1 && kind == '*' {
			return respReply{Kind: kind, Null: true}, nil
		}
		if n < 0 {
			return respReply{}, fmt.Errorf("bad length %q", line)
		}
		if kind == '%' || kind == '|' {
			n *= 2
		}
		rep := respReply{Kind: kind, Elems: make([]respReply, 0, min(n, 1024))}
		for range n {
			e, err := readRESP(r)
			if err != nil {
				return respReply{}, err
			}
			rep.Elems = append(rep.Elems, e)
		}
		if kind == '|' {
			// An attribute is followed by the reply it describes; keep
			// both so a stray attribute shows up as a difference.
			next, err := readRESP(r)
			if err != nil {
				return respReply{}, err
			}
			rep.Elems = append(rep.Elems, next)
		}
		return rep, nil
	}
	return respReply{}, fmt.Errorf("unknown reply type %q", line)
}

// readRESPLine reads a line ended by CRLF and returns it without the CRLF.
func readRESPLine(r *bufio.Reader) (string, error) {
	var sb strings.Builder
	for {
		chunk, err := r.ReadSlice('\n')
		sb.Write(chunk)
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return "", err
		}
		if sb.Len() > maxRESPLen {
			return "", errors.New("reply line too long")
		}
	}
	s := sb.String()
	if !strings.HasSuffix(s, "\r\n") {
		return "", fmt.Errorf("line %q not ended by CRLF", s)
	}
	return s[:len(s)-2], nil
}

// String renders a reply on one line: +OK, -ERR text, :5, "bulk" (Go
// quoted), $nil and *nil for RESP2's nulls, _ for RESP3's, *[a, b], %{k: v},
// ~{a}, >[a], ,1.5, #t, (123, =txt:"...".
func (r respReply) String() string {
	var sb strings.Builder
	r.render(&sb)
	return sb.String()
}

func (r respReply) render(sb *strings.Builder) {
	switch r.Kind {
	case '+', '-', ',', '(', '#':
		q := strconv.Quote(r.Str)
		sb.WriteByte(r.Kind)
		sb.WriteString(q[1 : len(q)-1])
	case ':':
		sb.WriteByte(':')
		sb.WriteString(strconv.FormatInt(r.Int, 10))
	case '_':
		sb.WriteByte('_')
	case '$':
		if r.Null {
			sb.WriteString("$nil")
			return
		}
		sb.WriteString(strconv.Quote(r.Str))
	case '=':
		sb.WriteByte('=')
		sb.WriteString(strconv.Quote(r.Str))
	case '*', '~', '>', '%', '|':
		if r.Null {
			sb.WriteString("*nil")
			return
		}
		brackets := "[]"
		if r.Kind == '~' || r.Kind == '%' || r.Kind == '|' {
			brackets = "{}"
		}
		sb.WriteByte(r.Kind)
		sb.WriteByte(brackets[0])
		paired := r.Kind == '%' || r.Kind == '|'
		for i, e := range r.Elems {
			switch {
			case r.Kind == '|' && i == len(r.Elems)-1:
				// The reply an attribute describes.
				sb.WriteString("} ")
				e.render(sb)
				return
			case i == 0:
			case paired && i%2 == 1:
				sb.WriteString(": ")
			default:
				sb.WriteString(", ")
			}
			e.render(sb)
		}
		sb.WriteByte(brackets[1])
	default:
		fmt.Fprintf(sb, "?%c%q", r.Kind, r.Str)
	}
}

// respConn is one raw client connection.
type respConn struct {
	addr string
	nc   net.Conn
	r    *bufio.Reader
}

func dialRESP(addr string) (*respConn, error) {
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	return &respConn{addr: addr, nc: nc, r: bufio.NewReader(nc)}, nil
}

// do writes args as a RESP array of bulk strings and reads one reply.
func (c *respConn) do(args ...string) (respReply, error) {
	var sb strings.Builder
	fmt.Fprintf(&sb, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&sb, "$%d\r\n%s\r\n", len(a), a)
	}
	return c.send(sb.String())
}

// send writes raw bytes as they are and reads one reply.
func (c *respConn) send(raw string) (respReply, error) {
	c.nc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c.nc, raw); err != nil {
		return respReply{}, err
	}
	return readRESP(c.r)
}

// closedByPeer reports whether the server has closed the connection: a read
// returns EOF (or a reset) within timeout and no data.
func (c *respConn) closedByPeer(timeout time.Duration) error {
	c.nc.SetReadDeadline(time.Now().Add(timeout))
	b, err := c.r.ReadByte()
	switch {
	case err == nil:
		return fmt.Errorf("connection still open: read %q", b)
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed), strings.Contains(err.Error(), "reset by peer"):
		return nil
	default:
		return fmt.Errorf("connection still open: %v", err)
	}
}

func (c *respConn) Close() error { return c.nc.Close() }

// scriptLine is one command of a script with the directives that relax its
// comparison.
type scriptLine struct {
	File string
	No   int // 1-based line number in File
	Args []string
	// Sort compares array and set replies as multisets (KEYS).
	Sort bool
	// Tol is the largest difference allowed between two integer replies
	// (TTL, PTTL: the servers set and read the deadline at slightly
	// different moments).
	Tol int64
	// SkipReply compares nothing but that both servers answered.
	SkipReply bool
	// Hello compares a HELLO reply field by field, leaving out the fields
	// that name the server (helloDiffers).
	Hello bool
	// Inline sends Text followed by CRLF as an inline command, for the
	// server to split; Raw sends Text as it is (a hand-made RESP frame).
	// Args is empty for both.
	Inline, Raw bool
	Text        string
	// Closes expects both servers to close the connection after the reply
	// (protocol errors); the harness then reconnects. QUIT implies it.
	Closes bool
}

// wire is what the line sends to a server.
func (l scriptLine) wire() string {
	switch {
	case l.Inline:
		return l.Text + "\r\n"
	case l.Raw:
		return l.Text
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "*%d\r\n", len(l.Args))
	for _, a := range l.Args {
		fmt.Fprintf(&sb, "$%d\r\n%s\r\n", len(a), a)
	}
	return sb.String()
}

// closes reports whether the server must close the connection after
// answering the line.
func (l scriptLine) closes() bool {
	return l.Closes || (len(l.Args) > 0 && strings.EqualFold(l.Args[0], "QUIT"))
}

func (l scriptLine) command() string {
	switch {
	case l.Inline:
		return "(inline) " + l.Text
	case l.Raw:
		return "(raw) " + strconv.Quote(l.Text)
	}
	q := make([]string, len(l.Args))
	for i, a := range l.Args {
		if a == "" || strings.ContainsAny(a, " \t\"'\\#") || strconv.Quote(a) != `"`+a+`"` {
			q[i] = strconv.Quote(a)
		} else {
			q[i] = a
		}
	}
	return strings.Join(q, " ")
}

// parseScript reads a command script: one command per line, arguments split
// on blanks, "double quotes" with \" \\ \n \r \t \xHH escapes, 'single
// quotes' taken literally, # starting a comment outside quotes. A line may
// start with directives, each a word beginning with ~: ~sort, ~ttl (TTL,
// tolerance 1), ~pttl (PTTL, tolerance 100), ~skip-reply, ~hello, ~closes,
// and ~inline (the rest of the line is sent as it is, as an inline command)
// or ~raw (one quoted argument, sent as it is).
func parseScript(name, text string) ([]scriptLine, error) {
	var out []scriptLine
	for i, raw := range strings.Split(text, "\n") {
		l := scriptLine{File: name, No: i + 1}
		rest := strings.TrimLeft(raw, " \t")
		directives := strings.HasPrefix(rest, "~")
		for strings.HasPrefix(rest, "~") {
			word, after, _ := strings.Cut(rest, " ")
			rest = strings.TrimLeft(after, " \t")
			switch word {
			case "~sort":
				l.Sort = true
			case "~ttl":
				l.Tol = 1
			case "~pttl":
				l.Tol = 100
			case "~skip-reply":
				l.SkipReply = true
			case "~hello":
				l.Hello = true
			case "~inline":
				l.Inline = true
			case "~raw":
				l.Raw = true
			case "~closes":
				l.Closes = true
			default:
				return nil, fmt.Errorf("%s:%d: unknown directive %s", name, i+1, word)
			}
		}
		if l.Inline {
			if l.Text = strings.TrimRight(rest, "\r"); strings.TrimSpace(l.Text) == "" {
				return nil, fmt.Errorf("%s:%d: ~inline without a command", name, i+1)
			}
			out = append(out, l)
			continue
		}
		args, err := splitArgs(rest)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, i+1, err)
		}
		if len(args) == 0 {
			if directives {
				return nil, fmt.Errorf("%s:%d: directive without a command", name, i+1)
			}
			continue
		}
		if l.Raw {
			if len(args) != 1 {
				return nil, fmt.Errorf("%s:%d: ~raw takes one quoted argument, got %d", name, i+1, len(args))
			}
			l.Text = args[0]
			out = append(out, l)
			continue
		}
		l.Args = args
		out = append(out, l)
	}
	return out, nil
}

// splitArgs splits the command part of a script line into arguments.
func splitArgs(line string) ([]string, error) {
	var (
		args []string
		cur  strings.Builder
		in   bool // inside a word
	)
	flush := func() {
		if in {
			args = append(args, cur.String())
			cur.Reset()
			in = false
		}
	}
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == ' ' || c == '\t' || c == '\r':
			flush()
		case c == '#' && !in:
			return args, nil
		case c == '\'':
			in = true
			j := strings.IndexByte(line[i+1:], '\'')
			if j < 0 {
				return nil, errors.New("unterminated single quote")
			}
			cur.WriteString(line[i+1 : i+1+j])
			i += j + 1
		case c == '"':
			in = true
			i++
			for ; ; i++ {
				if i >= len(line) {
					return nil, errors.New("unterminated double quote")
				}
				c := line[i]
				if c == '"' {
					break
				}
				if c != '\\' {
					cur.WriteByte(c)
					continue
				}
				i++
				if i >= len(line) {
					return nil, errors.New("backslash at end of line")
				}
				switch line[i] {
				case '"', '\\':
					cur.WriteByte(line[i])
				case 'n':
					cur.WriteByte('\n')
				case 'r':
					cur.WriteByte('\r')
				case 't':
					cur.WriteByte('\t')
				case 'x':
					if i+2 >= len(line) {
						return nil, errors.New(`short \x escape`)
					}
					b, err := strconv.ParseUint(line[i+1:i+3], 16, 8)
					if err != nil {
						return nil, fmt.Errorf(`bad \x escape %q`, line[i-1:i+3])
					}
					cur.WriteByte(byte(b))
					i += 2
				default:
					return nil, fmt.Errorf(`unknown escape \%c`, line[i])
				}
			}
		default:
			in = true
			cur.WriteByte(c)
		}
	}
	flush()
	return args, nil
}

// loadScripts parses every testdata/redis/*.txt, in name order.
func loadScripts() ([][]scriptLine, error) {
	files, err := filepath.Glob(filepath.Join("testdata", "redis", "*.txt"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, errors.New("no scripts in testdata/redis")
	}
	slices.Sort(files)
	var all [][]scriptLine
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		lines, err := parseScript(filepath.Base(f), string(b))
		if err != nil {
			return nil, err
		}
		all = append(all, lines)
	}
	return all, nil
}

// helloDiffers are the HELLO fields whose values name the server rather than
// the protocol: they are allowed to differ between mcpd and redis-server.
var helloDiffers = map[string]bool{"server": true, "version": true, "id": true}

// compareReplies returns "" when want (redis-server) and got (the other
// server) agree under l's directives, or why they do not.
func compareReplies(l scriptLine, want, got respReply) string {
	switch {
	case l.SkipReply:
		return ""
	case l.Hello:
		return compareHello(want, got)
	case l.Tol > 0 && want.Kind == ':' && got.Kind == ':':
		if d := want.Int - got.Int; d > l.Tol || d < -l.Tol {
			return fmt.Sprintf("integers differ by more than %d", l.Tol)
		}
		return ""
	case l.Sort:
		want, got = sortedReply(want), sortedReply(got)
	}
	if w, g := want.String(), got.String(); w != g {
		return "replies differ"
	}
	return ""
}

// sortedReply orders the elements of an array or set reply by rendering.
func sortedReply(r respReply) respReply {
	if (r.Kind != '*' && r.Kind != '~') || r.Null {
		return r
	}
	e := slices.Clone(r.Elems)
	slices.SortFunc(e, func(a, b respReply) int { return strings.Compare(a.String(), b.String()) })
	r.Elems = e
	return r
}

// compareHello compares two HELLO replies (a map in RESP3, a flat array in
// RESP2): the same kind, the same field names in the same order, and the
// same values except for helloDiffers.
func compareHello(want, got respReply) string {
	if want.Kind != got.Kind || want.Null != got.Null {
		return "reply types differ"
	}
	if want.Kind != '%' && want.Kind != '*' {
		if want.String() != got.String() {
			return "replies differ"
		}
		return ""
	}
	if len(want.Elems) != len(got.Elems) {
		return "field counts differ"
	}
	for i := 0; i+1 < len(want.Elems); i += 2 {
		wk, gk := want.Elems[i], got.Elems[i]
		if wk.String() != gk.String() {
			return fmt.Sprintf("field %d is %s, want %s", i/2, gk, wk)
		}
		if helloDiffers[wk.Str] {
			if want.Elems[i+1].Kind != got.Elems[i+1].Kind {
				return fmt.Sprintf("field %s has another type", wk.Str)
			}
			continue
		}
		if w, g := want.Elems[i+1].String(), got.Elems[i+1].String(); w != g {
			return fmt.Sprintf("field %s differs", wk.Str)
		}
	}
	return ""
}
