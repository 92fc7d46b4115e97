package systemtest

// The Redis differential test runs the command scripts of testdata/redis/
// against a real redis-server (the Debian package, started by the test on a
// loopback port) and against another server, once per protocol (RESP2, and
// RESP3 after HELLO 3), and requires identical replies: the same RESP types,
// the same bytes, the same error texts.
//
// The documented differences, and the only ones a script may relax:
//   - HELLO: the values of server, version and id (~hello);
//   - INFO: its contents (~skip-reply);
//   - KEYS: the order of the names (~sort);
//   - TTL and PTTL: 1 second and 100 milliseconds of tolerance (~ttl,
//     ~pttl), as the two servers set and read a deadline at slightly
//     different moments.
//
// Test_RedisDiff_SelfCheck compares two redis-servers, which proves the
// harness and the scripts (a script whose replies depend on timing fails
// it); it runs in make test. Test_RedisDiff_Mcpd compares redis-server with
// a dev node of mcpd and reports every line whose replies differ; both
// run in make test. The script syntax and directives are described at
// parseScript (redisresp_test.go).

import (
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// redisPackage is the Debian package that provides redis-server; make deps
// installs it.
const redisPackage = "redis-server"

// redisTarget is one server the scripts run against.
type redisTarget struct {
	name string
	addr string
	proc *proc
}

// startRedis starts a redis-server without a config file, persistence or
// daemonizing, on a free loopback port, in a temporary directory, and kills
// it when the test ends.
func startRedis(t *testing.T, name string) redisTarget {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server is not installed: install the Debian package %s (make deps does): %v", redisPackage, err)
	}
	dir := t.TempDir()
	port := strconv.Itoa(freePorts(t, 1)[0])
	p := &proc{
		name: name,
		bin:  bin,
		args: []string{"--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
			"--daemonize", "no", "--dir", dir, "--logfile", ""},
		logPath: filepath.Join(dir, "redis.log"),
	}
	manage(t, p)
	p.start(t)
	addr := net.JoinHostPort("127.0.0.1", port)
	waitRESP(t, p, addr)
	return redisTarget{name: name, addr: addr, proc: p}
}

// startMcpdRedis starts a dev node of mcpd with its Redis port open.
func startMcpdRedis(t *testing.T) redisTarget {
	t.Helper()
	bin := mcpdBinary(t)
	dir := t.TempDir()
	ports := freePorts(t, 4)
	p := &proc{
		name: "mcpd",
		bin:  bin,
		args: []string{"serve", "--dev",
			"--data-dir", filepath.Join(dir, "data"),
			"--port", strconv.Itoa(ports[0]),
			"--health-port", strconv.Itoa(ports[1]),
			"--raft-port", strconv.Itoa(ports[2]), "--admin-port", "0",
			"--redis-port", strconv.Itoa(ports[3]),
			"--metrics-port", "0",
		},
		logPath: filepath.Join(dir, "mcpd.log"),
	}
	manage(t, p)
	p.start(t)
	waitReady(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1])), 30*time.Second)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[3]))
	waitRESP(t, p, addr)
	return redisTarget{name: "mcpd", addr: addr, proc: p}
}

// waitRESP polls PING on addr until it answers +PONG.
func waitRESP(t *testing.T, p *proc, addr string) {
	t.Helper()
	waitFor(t, 20*time.Second, "PING on "+p.name+" at "+addr, func() error {
		if !p.running() {
			return fmt.Errorf("%s exited: %s", p.name, p.tail(20))
		}
		c, err := dialRESP(addr)
		if err != nil {
			return err
		}
		defer c.Close()
		r, err := c.do("PING")
		if err != nil {
			return err
		}
		if r.String() != "+PONG" {
			return fmt.Errorf("PING answered %s", r)
		}
		return nil
	})
}

// flushKeys deletes every key of the server with KEYS * and DEL, so that
// each script starts from an empty keyspace without relying on FLUSHALL.
func flushKeys(t *testing.T, target redisTarget) {
	t.Helper()
	c, err := dialRESP(target.addr)
	if err != nil {
		t.Fatalf("%s: %v", target.name, err)
	}
	defer c.Close()
	keys, err := c.do("KEYS", "*")
	if err != nil || keys.Kind != '*' || keys.Null {
		t.Fatalf("%s: KEYS * answered %s, %v", target.name, keys, err)
	}
	for i := 0; i < len(keys.Elems); i += 100 {
		args := []string{"DEL"}
		for _, k := range keys.Elems[i:min(i+100, len(keys.Elems))] {
			args = append(args, k.Str)
		}
		if r, err := c.do(args...); err != nil || r.Kind != ':' {
			t.Fatalf("%s: DEL answered %s, %v", target.name, r, err)
		}
	}
	// redis-server may still count keys whose deadline has passed but which
	// nothing has looked up yet; its expiry cycle removes them shortly.
	waitFor(t, 5*time.Second, target.name+" to hold no keys", func() error {
		r, err := c.do("DBSIZE")
		if err != nil {
			return err
		}
		if r.String() != ":0" {
			return fmt.Errorf("DBSIZE answered %s", r)
		}
		return nil
	})
}

// scriptSession is one connection to each server, in one protocol.
type scriptSession struct {
	t      *testing.T
	proto  int
	want   redisTarget // redis-server, the reference
	got    redisTarget
	wc, gc *respConn
}

func (s *scriptSession) open() {
	s.t.Helper()
	var err error
	if s.wc, err = dialRESP(s.want.addr); err != nil {
		s.t.Fatalf("%s: %v", s.want.name, err)
	}
	if s.gc, err = dialRESP(s.got.addr); err != nil {
		s.t.Fatalf("%s: %v", s.got.name, err)
	}
	if s.proto == 3 {
		hello := scriptLine{File: "(setup)", Args: []string{"HELLO", "3"}, Hello: true}
		w, g, ok := s.exchange(hello)
		if !ok {
			s.t.FailNow()
		}
		if w.Kind != '%' {
			s.t.Fatalf("%s answered HELLO 3 with %s", s.want.name, w)
		}
		if why := compareReplies(hello, w, g); why != "" {
			s.t.Fatalf("HELLO 3: %s\n  %s: %s\n  %s: %s", why, s.want.name, w, s.got.name, g)
		}
	}
}

func (s *scriptSession) close() {
	s.wc.Close()
	s.gc.Close()
}

// exchange sends one line to both servers, reference first. A failure of
// the reference ends the test; a failure of the other server is reported
// with ok false, and the caller reconnects.
func (s *scriptSession) exchange(l scriptLine) (want, got respReply, ok bool) {
	s.t.Helper()
	want, err := s.wc.send(l.wire())
	if err != nil {
		s.t.Fatalf("%s:%d: %s: %s: %v%s", l.File, l.No, l.command(), s.want.name, err, exitNote(s.want))
	}
	got, err = s.gc.send(l.wire())
	if err != nil {
		note := exitNote(s.got)
		s.t.Errorf("%s:%d (RESP%d): %s: %v%s\n  command:  %s\n  %-8s  %s",
			l.File, l.No, s.proto, s.got.name, err, note, l.command(), s.want.name+":", want)
		if note != "" {
			s.t.FailNow()
		}
		return want, got, false
	}
	return want, got, true
}

// exitNote waits briefly for a server whose connection failed to exit, and
// says so if it did (the log tail follows at the end of the test).
func exitNote(target redisTarget) string {
	if state, exited := target.proc.wait(2 * time.Second); exited {
		return fmt.Sprintf("; %s exited (%s)", target.name, state)
	}
	return ""
}

// runScript runs one script in one protocol and reports every line whose
// replies differ.
func runScript(t *testing.T, lines []scriptLine, proto int, want, got redisTarget) {
	t.Helper()
	flushKeys(t, want)
	flushKeys(t, got)
	s := &scriptSession{t: t, proto: proto, want: want, got: got}
	s.open()
	defer func() { s.close() }()
	for _, l := range lines {
		w, g, ok := s.exchange(l)
		if !ok {
			s.close()
			s.open()
			continue
		}
		if why := compareReplies(l, w, g); why != "" {
			t.Errorf("%s:%d (RESP%d): %s\n  command:  %s\n  %-8s  %s\n  %-8s  %s",
				l.File, l.No, proto, why, l.command(), s.want.name+":", w, s.got.name+":", g)
		}
		if l.closes() {
			// Both must have closed the connection; go on with new ones.
			for _, c := range []struct {
				name string
				conn *respConn
			}{{s.want.name, s.wc}, {s.got.name, s.gc}} {
				if err := c.conn.closedByPeer(5 * time.Second); err != nil {
					t.Errorf("%s:%d (RESP%d): %s: %s: %v", l.File, l.No, proto, l.command(), c.name, err)
				}
			}
			s.close()
			s.open()
		}
	}
}

// runRedisDiff runs every script once per protocol against want and got.
func runRedisDiff(t *testing.T, want, got redisTarget, protos []int) {
	scripts, err := loadScripts()
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, lines := range scripts {
		for _, proto := range protos {
			for _, target := range []redisTarget{want, got} {
				if !target.proc.running() {
					t.Fatalf("%s exited before %s (RESP%d); the remaining scripts were not run", target.name, lines[0].File, proto)
				}
			}
			t.Run(fmt.Sprintf("%s/RESP%d", strings.TrimSuffix(lines[0].File, ".txt"), proto), func(t *testing.T) {
				total += len(lines)
				runScript(t, lines, proto, want, got)
			})
		}
	}
	t.Logf("%d scripts, %d commands run over protocols %v", len(scripts), total, protos)
}

func Test_RedisDiff_SelfCheck(t *testing.T) {
	if testing.Short() {
		t.Skip("whole-process test; skipped with -short")
	}
	a := startRedis(t, "redis-a")
	b := startRedis(t, "redis-b")
	runRedisDiff(t, a, b, []int{2, 3})
}

func Test_RedisDiff_Mcpd(t *testing.T) {
	ref := startRedis(t, "redis")
	m := startMcpdRedis(t)
	runRedisDiff(t, ref, m, []int{2, 3})
}
