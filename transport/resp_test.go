package transport_test

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mcpd/mcpd/auth"
	"github.com/mcpd/mcpd/internal/testcluster"
	"github.com/mcpd/mcpd/transport"
)

// respClient speaks RESP by hand, so tests see the exact bytes.
type respClient struct {
	t  *testing.T
	nc net.Conn
	rd *bufio.Reader
}

func startRESP(t *testing.T, nd *testcluster.Node) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := transport.NewRESPServer(nd.Node, transport.RESPOptions{Dev: true})
	nd.WS.OnNodeEffect(srv.Touch)
	go srv.Serve(ln)
	t.Cleanup(srv.Close)
	return ln.Addr().String()
}

func dialRESP(t *testing.T, addr string) *respClient {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &respClient{t: t, nc: nc, rd: bufio.NewReader(nc)}
}

// send writes commands as RESP arrays, all in one write (a pipeline).
func (c *respClient) send(cmds ...[]string) {
	c.t.Helper()
	var b strings.Builder
	for _, args := range cmds {
		fmt.Fprintf(&b, "*%d\r\n", len(args))
		for _, a := range args {
			fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
		}
	}
	_ = c.nc.SetWriteDeadline(time.Now().Add(waitTime))
	if _, err := c.nc.Write([]byte(b.String())); err != nil {
		c.t.Fatal(err)
	}
}

// reply reads one reply and renders it compactly: +OK, -ERR ..., :1,
// "bulk", nil, [a b], {k: v}.
func (c *respClient) reply() string {
	c.t.Helper()
	_ = c.nc.SetReadDeadline(time.Now().Add(waitTime))
	line, err := c.rd.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read reply: %v", err)
	}
	line = strings.TrimSuffix(line, "\r\n")
	switch line[0] {
	case '+', '-', ':':
		return line
	case '_':
		return "nil"
	case '$':
		n, _ := strconv.Atoi(line[1:])
		if n < 0 {
			return "nil"
		}
		buf := make([]byte, n+2)
		if _, err := ioReadFull(c.rd, buf); err != nil {
			c.t.Fatal(err)
		}
		return strconv.Quote(string(buf[:n]))
	case '*', '%', '>':
		n, _ := strconv.Atoi(line[1:])
		if n < 0 {
			return "nil"
		}
		parts := make([]string, 0, n)
		count := n
		if line[0] == '%' {
			count = 2 * n
		}
		for range count {
			parts = append(parts, c.reply())
		}
		if line[0] == '%' {
			var kv []string
			for i := 0; i < len(parts); i += 2 {
				kv = append(kv, parts[i]+": "+parts[i+1])
			}
			return "{" + strings.Join(kv, ", ") + "}"
		}
		return "[" + strings.Join(parts, " ") + "]"
	}
	c.t.Fatalf("unknown reply %q", line)
	return ""
}

func ioReadFull(r *bufio.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// do sends one command and returns its reply.
func (c *respClient) do(args ...string) string {
	c.t.Helper()
	c.send(args)
	return c.reply()
}

func TestRESPStringsAndKeys(t *testing.T) {
	c := startCluster(t, 1, transport.Options{})
	r := dialRESP(t, startRESP(t, c.Nodes[0]))
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"PING"}, "+PONG"},
		{[]string{"SET", "k", "v"}, "+OK"},
		{[]string{"GET", "k"}, `"v"`},
		{[]string{"SET", "k", "w", "NX"}, "nil"},
		{[]string{"SET", "k", "w", "XX", "GET"}, `"v"`},
		{[]string{"GET", "k"}, `"w"`},
		{[]string{"INCR", "k"}, "-ERR value is not an integer or out of range"},
		{[]string{"INCRBY", "n", "9223372036854775807"}, ":9223372036854775807"},
		{[]string{"INCR", "n"}, "-ERR increment or decrement would overflow"},
		{[]string{"SET", "k", "v", "EX", "0"}, "-ERR invalid expire time in 'set' command"},
		{[]string{"SET", "k", "v", "NX", "XX"}, "-ERR syntax error"},
		{[]string{"EXPIRE", "k", "100"}, ":1"},
		{[]string{"TTL", "k"}, ":100"},
		{[]string{"PERSIST", "k"}, ":1"},
		{[]string{"TTL", "k"}, ":-1"},
		{[]string{"TTL", "missing"}, ":-2"},
		{[]string{"SET", "gone", "v", "PXAT", "1"}, "+OK"},
		{[]string{"EXISTS", "gone", "k", "k"}, ":2"},
		{[]string{"MSET", "a", "1", "b", "2"}, "+OK"},
		{[]string{"MGET", "a", "b", "c"}, `["1" "2" nil]`},
		{[]string{"DEL", "a", "b", "c"}, ":2"},
		{[]string{"TYPE", "k"}, "+string"},
		{[]string{"GET"}, "-ERR wrong number of arguments for 'get' command"},
		{[]string{"NOPE", "x"}, "-ERR unknown command 'NOPE', with args beginning with: 'x' "},
		{[]string{"SELECT", "1"}, "-ERR DB index is out of range"},
	} {
		if got := r.do(tc.args...); got != tc.want {
			t.Errorf("%v: %s, want %s", tc.args, got, tc.want)
		}
	}
	// RESP3 after HELLO 3: maps and nulls have their own types.
	if got := r.do("HELLO", "3"); !strings.HasPrefix(got, `{"server": "mcpd"`) || !strings.Contains(got, `"proto": :3`) {
		t.Fatalf("HELLO 3: %s", got)
	}
	if got := r.do("GET", "missing"); got != "nil" {
		t.Fatalf("GET missing in RESP3: %s", got)
	}
}

// A pipeline of writes and reads answers in order, each read seeing the
// writes sent before it.
func TestRESPPipelineOrder(t *testing.T) {
	c := startCluster(t, 1, transport.Options{})
	r := dialRESP(t, startRESP(t, c.Nodes[0]))
	var cmds [][]string
	for i := range 200 {
		cmds = append(cmds, []string{"INCR", "ctr"}, []string{"GET", "ctr"})
		_ = i
	}
	r.send(cmds...)
	for i := 1; i <= 200; i++ {
		if got, want := r.reply(), ":"+strconv.Itoa(i); got != want {
			t.Fatalf("INCR %d: %s", i, got)
		}
		if got, want := r.reply(), strconv.Quote(strconv.Itoa(i)); got != want {
			t.Fatalf("GET after INCR %d: %s", i, got)
		}
	}
}

// A write on a follower is read back on that follower at once, and the
// keyspace is the same on every node.
func TestRESPCluster(t *testing.T) {
	c, leader, followers := startThree(t)
	fr := dialRESP(t, startRESP(t, followers[0]))
	if got := fr.do("SET", "shared", "1"); got != "+OK" {
		t.Fatal(got)
	}
	if got := fr.do("GET", "shared"); got != `"1"` {
		t.Fatalf("read on the follower after its write: %s", got)
	}
	lr := dialRESP(t, startRESP(t, leader))
	testcluster.WaitFor(t, waitTime, func() bool { return lr.do("GET", "shared") == `"1"` })
	_ = c
}

func TestRESPTransactions(t *testing.T) {
	c := startCluster(t, 1, transport.Options{})
	r := dialRESP(t, startRESP(t, c.Nodes[0]))
	r.send([]string{"MULTI"}, []string{"SET", "a", "1"}, []string{"INCR", "a"}, []string{"PING"}, []string{"GET", "a"}, []string{"EXEC"})
	for _, want := range []string{"+OK", "+QUEUED", "+QUEUED", "+QUEUED", "+QUEUED", `[+OK :2 +PONG "2"]`} {
		if got := r.reply(); got != want {
			t.Fatalf("got %s, want %s", got, want)
		}
	}
	r.send([]string{"MULTI"}, []string{"SET", "b"}, []string{"INCR", "a"}, []string{"EXEC"}, []string{"GET", "a"})
	for _, want := range []string{"+OK", "-ERR wrong number of arguments for 'set' command", "+QUEUED",
		"-EXECABORT Transaction discarded because of previous errors.", `"2"`} {
		if got := r.reply(); got != want {
			t.Fatalf("got %s, want %s", got, want)
		}
	}
	for _, tc := range [][2]string{{"EXEC", "-ERR EXEC without MULTI"}, {"DISCARD", "-ERR DISCARD without MULTI"}} {
		if got := r.do(tc[0]); got != tc[1] {
			t.Fatalf("%s: %s", tc[0], got)
		}
	}
	if got := r.do("MULTI"); got != "+OK" {
		t.Fatal(got)
	}
	if got := r.do("MULTI"); got != "-ERR MULTI calls can not be nested" {
		t.Fatal(got)
	}
	r.do("SET", "a", "99")
	if got := r.do("DISCARD"); got != "+OK" {
		t.Fatal(got)
	}
	if got := r.do("GET", "a"); got != `"2"` {
		t.Fatalf("a discarded SET changed a: %s", got)
	}
}

// Outside dev mode a Redis client authenticates as an agent with the
// token 'mcpd agent add --token' issued, and reaches only its keys.
func TestRESPAuthAndKeyACL(t *testing.T) {
	s := startSecure(t, 1)
	token := "redis-token-for-cipher-0123456789"
	sum := sha256.Sum256([]byte(token))
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	if st, out := s.adminCall(0, "POST", "/v1/agents", transport.AdminAgentRequest{Name: "cipher", Alg: "ed25519", PublicKey: pub,
		TokenSHA256: sum[:], ACL: auth.ACL{Keys: []string{"cipher:*"}}}); st != http.StatusCreated {
		t.Fatalf("add: %d %v", st, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := transport.NewRESPServer(s.c.Nodes[0].Node, transport.RESPOptions{Audit: s.c.Nodes[0].WS.RecordAuthEvent})
	s.c.Nodes[0].WS.OnRevoke(srv.Revoke)
	go srv.Serve(ln)
	t.Cleanup(srv.Close)
	r := dialRESP(t, ln.Addr().String())
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"PING"}, "+PONG"},
		{[]string{"GET", "cipher:a"}, "-NOAUTH Authentication required."},
		{[]string{"AUTH", token}, "-WRONGPASS invalid username-password pair or user is disabled."},
		{[]string{"AUTH", "cipher", "wrong"}, "-WRONGPASS invalid username-password pair or user is disabled."},
		{[]string{"AUTH", "ghost", token}, "-WRONGPASS invalid username-password pair or user is disabled."},
		{[]string{"AUTH", "cipher", token}, "+OK"},
		{[]string{"SET", "cipher:a", "1"}, "+OK"},
		{[]string{"GET", "cipher:a"}, `"1"`},
		{[]string{"SET", "payroll", "1"}, "-NOPERM this user has no permissions to access one of the keys used as arguments"},
		{[]string{"MSET", "cipher:b", "2", "payroll", "3"}, "-NOPERM this user has no permissions to access one of the keys used as arguments"},
		{[]string{"EXISTS", "cipher:b"}, ":0"},
		{[]string{"KEYS", "*"}, "-NOPERM this user has no permissions to run the 'keys' command"},
	} {
		if got := r.do(tc.args...); got != tc.want {
			t.Errorf("%v: %s, want %s", tc.args, got, tc.want)
		}
	}
	// Revoking the agent closes its Redis connections too.
	if st, _ := s.adminCall(0, "POST", "/v1/agents/cipher/revoke", nil); st != http.StatusOK {
		t.Fatal(st)
	}
	_ = r.nc.SetReadDeadline(time.Now().Add(waitTime))
	if _, err := r.rd.ReadByte(); err == nil {
		t.Fatal("the revoked agent's Redis connection is still open")
	}
}

// A command larger than MaxCommand is refused before the node buffers it
// whole, and the connection closes; a pipeline of many commands that are
// each within the limit is not refused.
func TestRESPCommandSizeLimit(t *testing.T) {
	c := startCluster(t, 1, transport.Options{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := transport.NewRESPServer(c.Nodes[0].Node, transport.RESPOptions{Dev: true, MaxCommand: 64 << 10})
	go srv.Serve(ln)
	t.Cleanup(srv.Close)

	r := dialRESP(t, ln.Addr().String())
	value := strings.Repeat("v", 40<<10)
	var cmds [][]string
	for i := range 50 {
		cmds = append(cmds, []string{"SET", "k" + strconv.Itoa(i), value})
	}
	r.send(cmds...)
	for i := range 50 {
		if got := r.reply(); got != "+OK" {
			t.Fatalf("SET %d of a 2 MB pipeline: %s", i, got)
		}
	}

	big := dialRESP(t, ln.Addr().String())
	_ = big.nc.SetWriteDeadline(time.Now().Add(waitTime))
	fmt.Fprintf(big.nc, "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n", 1<<30)
	chunk := []byte(strings.Repeat("x", 64<<10))
	for range 8 {
		if _, err := big.nc.Write(chunk); err != nil {
			break // the server closed the connection: also a refusal
		}
	}
	if got := big.reply(); got != "-ERR Protocol error: invalid bulk length" {
		t.Fatalf("a 1 GiB bulk string: %s", got)
	}
	_ = big.nc.SetReadDeadline(time.Now().Add(waitTime))
	if _, err := big.rd.ReadByte(); err == nil {
		t.Fatal("connection still open after the protocol error")
	}
	if got := r.do("EXISTS", "k"); got != ":0" {
		t.Fatalf("the refused SET stored something: %s", got)
	}
}

// A blocked pop on one node is woken by a push on another; a timeout
// answers the null reply; the connection's next command waits for the
// blocked one, as in Redis.
func TestRESPBlockingPops(t *testing.T) {
	_, leader, followers := startThree(t)
	addr := startRESP(t, followers[0])
	blocked, watcher := dialRESP(t, addr), dialRESP(t, addr)
	pusher := dialRESP(t, startRESP(t, followers[1]))
	other := dialRESP(t, startRESP(t, leader))

	blocked.send([]string{"BLPOP", "jobs", "other", "0"}, []string{"PING"})
	// The pop found nothing and waits (INFO counts it) before the push.
	testcluster.WaitFor(t, waitTime, func() bool {
		return strings.Contains(watcher.do("INFO", "clients"), "blocked_clients:1")
	})
	if got := pusher.do("RPUSH", "jobs", "a", "b"); got != ":2" {
		t.Fatalf("RPUSH: %s", got)
	}
	if got := blocked.reply(); got != `["jobs" "a"]` {
		t.Fatalf("BLPOP woken by a push on another node: %s", got)
	}
	if got := blocked.reply(); got != "+PONG" {
		t.Fatalf("the command after BLPOP: %s", got)
	}
	testcluster.WaitFor(t, waitTime, func() bool { return other.do("LRANGE", "jobs", "0", "-1") == `["b"]` })

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"BLPOP", "empty", "0.05"}, "nil"},
		{[]string{"BRPOP", "jobs", "1"}, `["jobs" "b"]`},
		{[]string{"BRPOPLPUSH", "empty", "dst", "0.05"}, "nil"},
		{[]string{"BLMOVE", "empty", "dst", "LEFT", "RIGHT", "0.05"}, "nil"},
		{[]string{"BLPOP", "k", "-1"}, "-ERR timeout is negative"},
		{[]string{"BLPOP", "k", "x"}, "-ERR timeout is not a float or out of range"},
		{[]string{"BLPOP", "k"}, "-ERR wrong number of arguments for 'blpop' command"},
	} {
		if got := blocked.do(tc.args...); got != tc.want {
			t.Errorf("%v: %s, want %s", tc.args, got, tc.want)
		}
	}
	pusher.do("RPUSH", "src", "x")
	if got := blocked.do("BLMOVE", "src", "dst", "LEFT", "RIGHT", "0"); got != `"x"` {
		t.Fatalf("BLMOVE: %s", got)
	}
	if got := blocked.do("BLMPOP", "0.05", "2", "none", "dst", "LEFT", "COUNT", "5"); got != `["dst" ["x"]]` {
		t.Fatalf("BLMPOP: %s", got)
	}
}

// Redis pub/sub across nodes and across faces: a Redis PUBLISH reaches
// Redis subscribers on every node and WebSocket subscribers of the topic
// of the same name; a WebSocket publish reaches Redis subscribers.
func TestRESPPubSub(t *testing.T) {
	c, leader, followers := startThree(t)
	sub := dialRESP(t, startRESP(t, followers[0]))
	pub := dialRESP(t, startRESP(t, followers[1]))
	sub.send([]string{"SUBSCRIBE", "news.sports", "chat:room"}, []string{"PSUBSCRIBE", "news.*"})
	for _, want := range []string{`["subscribe" "news.sports" :1]`, `["subscribe" "chat:room" :2]`, `["psubscribe" "news.*" :3]`} {
		if got := sub.reply(); got != want {
			t.Fatalf("got %s, want %s", got, want)
		}
	}
	if got := sub.do("GET", "x"); !strings.HasPrefix(got, "-ERR Can't execute 'get'") {
		t.Fatalf("GET in subscribed mode: %s", got)
	}
	ws := login(t, c, leader.URL, "watcher")
	wsub := subscribe(t, ws, "news.>")

	if got := pub.do("PUBLISH", "chat:room", "hello"); got != ":1" && got != ":0" {
		// The subscriber is on another node: Redis Cluster counts only
		// this node's subscribers, and so does mcpd for Redis ones.
		t.Fatalf("PUBLISH chat:room: %s", got)
	}
	if got := sub.reply(); got != `["message" "chat:room" "hello"]` {
		t.Fatalf("message: %s", got)
	}
	if got := pub.do("PUBLISH", "news.sports", "goal"); got != ":1" {
		t.Fatalf("PUBLISH news.sports counts the WebSocket subscription: %s", got)
	}
	for _, want := range []string{`["message" "news.sports" "goal"]`, `["pmessage" "news.*" "news.sports" "goal"]`} {
		if got := sub.reply(); got != want {
			t.Fatalf("got %s, want %s", got, want)
		}
	}
	ev := ws.next(func(f frame) bool { return f.op() == "event" && f.str("sub") == wsub })
	var got struct {
		From string `json:"from"`
		Body string `json:"body"`
	}
	if err := json.Unmarshal(ev["msg"], &got); err != nil || got.Body != "goal" || got.From != "redis" {
		t.Fatalf("WebSocket event of a Redis publish: %s (%v)", ev, err)
	}
	// And the other way round: the envelope, as JSON.
	msg := env("watcher", `"from ws"`)
	publish(t, ws, "news.sports", msg)
	for _, want := range []string{`["message" "news.sports" ` + strconv.Quote(msg) + `]`, `["pmessage" "news.*" "news.sports" ` + strconv.Quote(msg) + `]`} {
		if got := sub.reply(); got != want {
			t.Fatalf("got %s, want %s", got, want)
		}
	}
	if got := sub.do("UNSUBSCRIBE"); got != `["unsubscribe" "chat:room" :2]` {
		t.Fatalf("UNSUBSCRIBE: %s", got)
	}
}

// CLIENT LIST reads other connections' names while they change them.
func TestRESPClientListWhileRenaming(t *testing.T) {
	c := startCluster(t, 1, transport.Options{})
	addr := startRESP(t, c.Nodes[0])
	a, b := dialRESP(t, addr), dialRESP(t, addr)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 100 {
			a.send([]string{"CLIENT", "SETNAME", "n" + strconv.Itoa(i)})
		}
	}()
	for range 100 {
		if got := b.do("CLIENT", "LIST"); !strings.Contains(got, "id=") {
			t.Fatalf("CLIENT LIST: %s", got)
		}
	}
	<-done
	for range 100 {
		a.reply()
	}
	if got := a.do("CLIENT", "GETNAME"); got != `"n99"` {
		t.Fatalf("CLIENT GETNAME: %s", got)
	}
}

// XREAD BLOCK with "$" waits for entries added after it started, on any
// node; with a time limit it answers null when none come.
func TestRESPBlockingXRead(t *testing.T) {
	_, _, followers := startThree(t)
	addr := startRESP(t, followers[0])
	reader, watcher := dialRESP(t, addr), dialRESP(t, addr)
	writer := dialRESP(t, startRESP(t, followers[1]))
	if got := writer.do("XADD", "events", "1-1", "old", "x"); got != `"1-1"` {
		t.Fatal(got)
	}
	testcluster.WaitFor(t, waitTime, func() bool { return watcher.do("XLEN", "events") == ":1" })
	reader.send([]string{"XREAD", "BLOCK", "0", "STREAMS", "events", "$"})
	testcluster.WaitFor(t, waitTime, func() bool {
		return strings.Contains(watcher.do("INFO", "clients"), "blocked_clients:1")
	})
	if got := writer.do("XADD", "events", "2-1", "new", "y"); got != `"2-1"` {
		t.Fatal(got)
	}
	if got := reader.reply(); got != `[["events" [["2-1" ["new" "y"]]]]]` {
		t.Fatalf("XREAD BLOCK woken by an XADD on another node: %s", got)
	}
	if got := reader.do("XREAD", "BLOCK", "50", "STREAMS", "events", "$"); got != "nil" {
		t.Fatalf("XREAD BLOCK 50 with nothing new: %s", got)
	}
}

// XGROUP HELP and XINFO HELP list the subcommands supported here, every
// one of which the command accepts; inside MULTI the list is EXEC's
// reply in its place.
func TestRESPContainerHelp(t *testing.T) {
	c := startCluster(t, 1, transport.Options{})
	r := dialRESP(t, startRESP(t, c.Nodes[0]))
	for name, subs := range map[string][]string{
		"XGROUP": {"CREATE", "SETID", "DESTROY", "CREATECONSUMER", "DELCONSUMER", "HELP"},
		"XINFO":  {"STREAM", "GROUPS", "CONSUMERS", "HELP"},
	} {
		got := r.do(name, "help")
		if !strings.HasPrefix(got, "[+"+name+" <subcommand>") {
			t.Fatalf("%s HELP: %s", name, got)
		}
		for _, sub := range subs {
			if !strings.Contains(got, " +"+sub) {
				t.Errorf("%s HELP does not list %s: %s", name, sub, got)
			}
			// Each listed subcommand is known: an unknown one is refused
			// with "unknown subcommand".
			if sub != "HELP" {
				if v := r.do(name, sub); strings.Contains(v, "unknown subcommand '") {
					t.Errorf("%s %s, listed by HELP: %s", name, sub, v)
				}
			}
		}
		r.send([]string{"MULTI"}, []string{name, "HELP"}, []string{"PING"}, []string{"EXEC"})
		for i, want := range []string{"+OK", "+QUEUED", "+QUEUED", "[" + got + " +PONG]"} {
			if v := r.reply(); v != want {
				t.Fatalf("%s HELP in MULTI, reply %d: %s, want %s", name, i, v, want)
			}
		}
	}
	if got := r.do("XGROUP", "NOPE"); got != "-ERR unknown subcommand 'NOPE'. Try XGROUP HELP." {
		t.Fatalf("XGROUP NOPE: %s", got)
	}
}
