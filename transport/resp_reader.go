package transport

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strconv"
)

// Reading Redis requests: RESP arrays of bulk strings, and inline
// commands (a line of words, with Redis's quoting), as Redis reads them:
// the same protocol errors word for word, after which the connection is
// closed. Every length is checked before anything is allocated for it:
// a request cannot make the node buffer more than maxCommand bytes.

// respProtoError is a malformed request; its text follows "ERR ".
type respProtoError struct{ msg string }

func (e *respProtoError) Error() string { return "Protocol error: " + e.msg }

// Limits of a request, besides maxCommand.
const (
	maxInline    = 64 << 10 // an inline command's line
	maxMultibulk = 1 << 20  // arguments of one command
)

type respReader struct {
	rd         *bufio.Reader
	maxCommand int
}

func newRESPReader(r io.Reader, maxCommand int) *respReader {
	return &respReader{rd: bufio.NewReaderSize(r, 16<<10), maxCommand: maxCommand}
}

// buffered reports whether a request may be waiting already (so replies
// can wait for it to be read before a flush).
func (r *respReader) buffered() bool { return r.rd.Buffered() > 0 }

// line reads up to '\n' (at most limit bytes) without the line end.
func (r *respReader) line(limit int, tooLong string) ([]byte, error) {
	var out []byte
	for {
		frag, err := r.rd.ReadSlice('\n')
		out = append(out, frag...)
		if len(out) > limit {
			return nil, &respProtoError{tooLong}
		}
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
	}
	out = bytes.TrimSuffix(out[:len(out)-1], []byte("\r"))
	return out, nil
}

// next reads one command. An empty array or an empty inline line is no
// command: next goes on to the following one, as Redis does.
func (r *respReader) next() ([][]byte, error) {
	for {
		b, err := r.rd.Peek(1)
		if err != nil {
			return nil, err
		}
		if b[0] != '*' {
			l, err := r.line(maxInline, "too big inline request")
			if err != nil {
				return nil, err
			}
			args, err := splitInline(l)
			if err != nil {
				return nil, err
			}
			if len(args) == 0 {
				continue
			}
			return args, nil
		}
		head, err := r.line(64, "invalid multibulk length")
		if err != nil {
			return nil, err
		}
		n, err := strconv.ParseInt(string(head[1:]), 10, 64)
		if err != nil || n > maxMultibulk {
			return nil, &respProtoError{"invalid multibulk length"}
		}
		if n <= 0 {
			continue
		}
		args := make([][]byte, 0, n)
		total := 0
		for range n {
			h, err := r.line(64, "invalid bulk length")
			if err != nil {
				return nil, err
			}
			if len(h) == 0 || h[0] != '$' {
				got := "\\n"
				if len(h) > 0 {
					got = string(h[0])
				}
				return nil, &respProtoError{"expected '$', got '" + got + "'"}
			}
			size, err := strconv.ParseInt(string(h[1:]), 10, 64)
			if err != nil || size < 0 || size > int64(r.maxCommand-total) {
				return nil, &respProtoError{"invalid bulk length"}
			}
			total += int(size)
			buf := make([]byte, size+2)
			if _, err := io.ReadFull(r.rd, buf); err != nil {
				return nil, err
			}
			args = append(args, buf[:size])
		}
		return args, nil
	}
}

// splitInline splits an inline command line into words: blanks separate
// them; "double quotes" take \n \r \t \b \a \\ \" and \xHH escapes,
// 'single quotes' take \'; a closing quote must end its word.
func splitInline(l []byte) ([][]byte, error) {
	var args [][]byte
	i := 0
	for {
		for i < len(l) && isBlank(l[i]) {
			i++
		}
		if i >= len(l) {
			return args, nil
		}
		var cur []byte
		inDQ, inSQ, done := false, false, false
		for !done {
			switch {
			case inDQ:
				if i >= len(l) {
					return nil, &respProtoError{"unbalanced quotes in request"}
				}
				c := l[i]
				if c == '\\' && i+3 < len(l) && l[i+1] == 'x' && isHex(l[i+2]) && isHex(l[i+3]) {
					cur = append(cur, hexVal(l[i+2])<<4|hexVal(l[i+3]))
					i += 3
				} else if c == '\\' && i+1 < len(l) {
					i++
					switch l[i] {
					case 'n':
						cur = append(cur, '\n')
					case 'r':
						cur = append(cur, '\r')
					case 't':
						cur = append(cur, '\t')
					case 'b':
						cur = append(cur, '\b')
					case 'a':
						cur = append(cur, '\a')
					default:
						cur = append(cur, l[i])
					}
				} else if c == '"' {
					if i+1 < len(l) && !isBlank(l[i+1]) {
						return nil, &respProtoError{"unbalanced quotes in request"}
					}
					done = true
				} else {
					cur = append(cur, c)
				}
			case inSQ:
				if i >= len(l) {
					return nil, &respProtoError{"unbalanced quotes in request"}
				}
				c := l[i]
				if c == '\\' && i+1 < len(l) && l[i+1] == '\'' {
					i++
					cur = append(cur, '\'')
				} else if c == '\'' {
					if i+1 < len(l) && !isBlank(l[i+1]) {
						return nil, &respProtoError{"unbalanced quotes in request"}
					}
					done = true
				} else {
					cur = append(cur, c)
				}
			default:
				if i >= len(l) {
					done = true
					break
				}
				switch c := l[i]; {
				case isBlank(c):
					done = true
				case c == '"':
					inDQ = true
				case c == '\'':
					inSQ = true
				default:
					cur = append(cur, c)
				}
			}
			if i < len(l) {
				i++
			}
		}
		if cur == nil {
			cur = []byte{}
		}
		args = append(args, cur)
	}
}

func isBlank(c byte) bool {
	return c == ' ' || c == '\n' || c == '\r' || c == '\t' || c == 0
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func hexVal(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}
