//go:build linux

package systemtest

// Test_Redis_CLIInteractive types a session into the real redis-cli in its
// interactive mode, against a dev node of mcpd. redis-cli is interactive
// only when its standard input is a terminal, so it runs under util-linux
// script(1), which gives it a pseudo-terminal: it then prints its prompt,
// edits the line with linenoise (raw mode, a redraw of the line per key)
// and renders replies in its human format ("hello", (integer) 3, 1) "a",
// (error) ...). The output is replayed on a small line screen (carriage
// returns, erase-to-end-of-line and cursor moves) so that the test reads
// what a user would see.

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"
)

// cliSession is redis-cli running under script(1), with everything it
// wrote so far.
type cliSession struct {
	t      *testing.T
	ctx    context.Context
	prompt string
	cmd    *exec.Cmd
	stdin  io.WriteCloser

	mu   sync.Mutex
	out  []byte
	done chan struct{} // closed once the output reached EOF
}

// startCLI runs redis-cli -p port interactively under script(1) until ctx
// ends. The pseudo-terminal gets a size first (script's own input is a
// pipe, so it has none): with no size linenoise asks the terminal for the
// cursor position and waits for an answer that never comes.
func startCLI(t *testing.T, ctx context.Context, port string) *cliSession {
	t.Helper()
	shell := "stty cols 200 rows 50 && exec redis-cli -p " + port
	cmd := exec.CommandContext(ctx, "script", "-qfec", shell, os.DevNull)
	cmd.Env = append(os.Environ(),
		"SHELL=/bin/sh", // script(1) runs the command with $SHELL -c
		"TERM=xterm",    // not a terminal linenoise declines to edit on (dumb)
		"REDISCLI_HISTFILE="+os.DevNull,
		"REDISCLI_RCFILE="+os.DevNull,
	)
	// Its own process group, so that the end of the test kills script and
	// redis-cli together.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	s := &cliSession{t: t, ctx: ctx, prompt: "127.0.0.1:" + port + "> ", cmd: cmd, stdin: stdin, done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting redis-cli under script: %v", err)
	}
	go func() {
		defer close(s.done)
		buf := make([]byte, 4096)
		for {
			n, err := stdout.Read(buf)
			s.mu.Lock()
			s.out = append(s.out, buf[:n]...)
			s.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			_ = cmd.Wait()
		}
		if t.Failed() {
			t.Logf("---- redis-cli's terminal ----\n%s", strings.Join(s.screen(), "\n"))
		}
	})
	return s
}

// raw is everything redis-cli wrote so far, escapes included.
func (s *cliSession) raw() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.out)
}

// screen is the output as a terminal shows it, one string per line.
func (s *cliSession) screen() []string { return render(s.raw()) }

// waitScreen waits until cond holds for the screen, failing the test at
// the context's deadline or when redis-cli has exited.
func (s *cliSession) waitScreen(what string, cond func([]string) bool) []string {
	s.t.Helper()
	for {
		lines := s.screen()
		if cond(lines) {
			return lines
		}
		select {
		case <-s.ctx.Done():
			s.t.Fatalf("waiting for %s: %v", what, s.ctx.Err())
		case <-s.done:
			if lines := s.screen(); cond(lines) {
				return lines
			}
			s.t.Fatalf("waiting for %s: redis-cli's output ended", what)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// typed counts the lines entered at the prompt so far.
func (s *cliSession) typed(lines []string) int {
	n := 0
	for _, l := range lines[:len(lines)-1] {
		if strings.HasPrefix(l, s.prompt) {
			n++
		}
	}
	return n
}

// ready reports whether redis-cli waits at an empty prompt after n lines
// were entered: linenoise switches the terminal to raw mode before it
// prints the prompt, and discards what was typed before that.
func (s *cliSession) ready(n int) func([]string) bool {
	return func(lines []string) bool {
		return s.typed(lines) == n && lines[len(lines)-1] == s.prompt
	}
}

// run types line at the prompt and returns the lines redis-cli printed
// in reply, once it shows its prompt again.
func (s *cliSession) run(line string) []string {
	s.t.Helper()
	n := s.typed(s.waitScreen("the prompt", s.ready(s.typed(s.screen()))))
	if _, err := io.WriteString(s.stdin, line+"\r"); err != nil {
		s.t.Fatalf("typing %q: %v", line, err)
	}
	lines := s.waitScreen("the reply to "+line, s.ready(n+1))
	// The reply is between the entered line and the new prompt.
	for i := len(lines) - 2; i >= 0; i-- {
		if strings.HasPrefix(lines[i], s.prompt) {
			if lines[i] != s.prompt+line {
				s.t.Fatalf("the entered line reads %q, want %q", lines[i], s.prompt+line)
			}
			return lines[i+1 : len(lines)-1]
		}
	}
	s.t.Fatalf("no entered line for %q", line)
	return nil
}

var csiRE = regexp.MustCompile(`^\x1b\[([0-9;?]*)([ -/]*[@-~])`)

// render replays terminal output on a screen of lines: printable text
// overwrites at the cursor, \r returns to the start of the line, \n starts
// the next one, \b and CSI C/D move the cursor, CSI K erases to the end of
// the line; other escapes (colours, the cursor position query, clearing)
// change no text.
func render(raw string) []string {
	lines := []string{""}
	cur := []rune{}
	col := 0
	for i := 0; i < len(raw); {
		if m := csiRE.FindStringSubmatch(raw[i:]); m != nil {
			i += len(m[0])
			n, err := strconv.Atoi(m[1])
			if err != nil || n == 0 {
				n = 1
			}
			switch m[2] {
			case "C":
				col += n
			case "D":
				col = max(col-n, 0)
			case "K":
				if (m[1] == "" || m[1] == "0") && col < len(cur) {
					cur = cur[:col]
				}
			}
			continue
		}
		r, size := utf8.DecodeRuneInString(raw[i:])
		i += size
		switch {
		case r == '\r':
			col = 0
		case r == '\n':
			lines[len(lines)-1] = string(cur)
			lines = append(lines, "")
			cur, col = []rune{}, 0
			continue
		case r == '\b':
			col = max(col-1, 0)
		case r == 0x1b || r < ' ' || r == 0x7f:
			// A lone escape or another control character.
		default:
			for len(cur) < col {
				cur = append(cur, ' ')
			}
			if col < len(cur) {
				cur[col] = r
			} else {
				cur = append(cur, r)
			}
			col++
		}
		lines[len(lines)-1] = string(cur)
	}
	return lines
}

func Test_Redis_CLIInteractive(t *testing.T) {
	for _, tool := range []string{"redis-cli", "script"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (redis-cli comes with the Debian package %s, script with bsdutils): %v", tool, redisPackage, err)
		}
	}
	target := startMcpdRedis(t)
	_, port, err := net.SplitHostPort(target.addr)
	if err != nil {
		t.Fatal(err)
	}
	logStart := target.proc.logSize(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cli := startCLI(t, ctx, port)
	// Connected, it asked for COMMAND DOCS and printed nothing but its
	// prompt (no "not connected>", no error).
	if lines := cli.waitScreen("redis-cli's first prompt", cli.ready(0)); len(lines) != 1 {
		t.Fatalf("redis-cli started with %q, want only its prompt %q", lines, cli.prompt)
	}

	// Its hints: typing a command name shows the command's arguments
	// (redis-cli's own help, which it uses as COMMAND DOCS answers an
	// error); Ctrl-U clears the line again.
	if _, err := io.WriteString(cli.stdin, "lrange "); err != nil {
		t.Fatal(err)
	}
	cli.waitScreen("the hint for LRANGE", func(lines []string) bool {
		return strings.HasPrefix(lines[len(lines)-1], cli.prompt+"lrange ") && strings.Contains(lines[len(lines)-1], "key start stop")
	})
	if _, err := io.WriteString(cli.stdin, "\x15"); err != nil {
		t.Fatal(err)
	}
	cli.waitScreen("an empty prompt", cli.ready(0))

	session := []struct {
		line string
		want []string
	}{
		{"set greeting hello", []string{"OK"}},
		{"get greeting", []string{`"hello"`}},
		{"rpush l a b c", []string{"(integer) 3"}},
		{"lrange l 0 -1", []string{`1) "a"`, `2) "b"`, `3) "c"`}},
		{"hset h f v", []string{"(integer) 1"}},
		{"hgetall h", []string{`1) "f"`, `2) "v"`}},
		{"xadd mcp:jobs * task t1", nil}, // the id, checked below
		{"xlen mcp:jobs", []string{"(integer) 1"}},
		{"incr n", []string{"(integer) 1"}},
		{"get nosuchkey", []string{"(nil)"}},
		{"nosuchcommand", nil}, // the error, checked below
	}
	for _, step := range session {
		got := cli.run(step.line)
		switch step.line {
		case "xadd mcp:jobs * task t1":
			if len(got) != 1 || !regexp.MustCompile(`^"[0-9]+-[0-9]+"$`).MatchString(got[0]) {
				t.Errorf("%s: redis-cli printed %q, want a quoted stream id", step.line, got)
			}
		case "nosuchcommand":
			if len(got) != 1 || !strings.HasPrefix(got[0], "(error) ERR unknown command 'nosuchcommand'") {
				t.Errorf("%s: redis-cli printed %q, want (error) ERR unknown command 'nosuchcommand'...", step.line, got)
			}
		default:
			if fmt.Sprint(got) != fmt.Sprint(step.want) {
				t.Errorf("%s: redis-cli printed %q, want %q", step.line, got, step.want)
			}
		}
	}

	// quit, entered at the prompt, ends redis-cli, and script(1) with it.
	cli.waitScreen("the prompt", cli.ready(len(session)))
	if _, err := io.WriteString(cli.stdin, "quit\r"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-cli.done:
	case <-ctx.Done():
		t.Fatalf("redis-cli still runs after quit: %v", ctx.Err())
	}
	if err := cli.cmd.Wait(); err != nil {
		t.Errorf("redis-cli after quit: %v", err)
	}
	if !slices.Contains(cli.screen(), cli.prompt+"quit") {
		t.Errorf("quit was not entered at the prompt")
	}

	// redis-cli's startup (COMMAND DOCS for its hints) and the session
	// logged no error or warning on the node.
	for _, l := range strings.Split(target.proc.logSince(t, logStart), "\n") {
		if strings.Contains(l, "level=ERROR") || strings.Contains(l, "level=WARN") || strings.Contains(l, "panic") {
			t.Errorf("mcpd logged during the redis-cli session: %s", l)
		}
	}
	// What a Redis client wrote is there for the next one.
	c, err := dialRESP(target.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if r, err := c.do("GET", "greeting"); err != nil || r.Kind != '$' || r.Str != "hello" {
		t.Errorf("GET greeting after the session: %s %v", r, err)
	}
}
