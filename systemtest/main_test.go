package systemtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// buildDir holds the mcpd binary built for this run of the package.
var (
	buildDir  string
	buildOnce sync.Once
	buildBin  string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// mcpdBinary builds ./cmd/mcpd once per test binary and returns its path.
func mcpdBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("whole-process test; skipped with -short")
	}
	buildOnce.Do(func() {
		out, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			buildErr = fmt.Errorf("go env GOMOD: %w", err)
			return
		}
		gomod := strings.TrimSpace(string(out))
		if gomod == "" || gomod == os.DevNull {
			buildErr = fmt.Errorf("go env GOMOD: not inside a module")
			return
		}
		if buildDir, err = os.MkdirTemp("", "mcpd-systemtest-"); err != nil {
			buildErr = err
			return
		}
		bin := filepath.Join(buildDir, "mcpd")
		start := time.Now()
		cmd := exec.Command("go", "build", "-o", bin, "./cmd/mcpd")
		cmd.Dir = filepath.Dir(gomod)
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/mcpd: %w\n%s", err, out)
			return
		}
		buildBin = bin
		fmt.Fprintf(os.Stderr, "systemtest: built %s in %v\n", bin, time.Since(start).Round(time.Millisecond))
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildBin
}

// runMcpd runs a short mcpd command (like tls init) to completion.
func runMcpd(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command(mcpdBinary(t), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("mcpd %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// freePorts returns n distinct ports that were free on 127.0.0.1: all n
// listeners are open at once, then closed.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	ports := make([]int, n)
	lns := make([]net.Listener, n)
	for i := range lns {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("finding a free port: %v", err)
		}
		lns[i] = ln
		ports[i] = ln.Addr().(*net.TCPAddr).Port
	}
	for _, ln := range lns {
		ln.Close()
	}
	return ports
}

// poll calls fn every 25ms until it returns nil or timeout has passed, and
// returns fn's last error.
func poll(timeout time.Duration, fn func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// waitFor polls fn and fails the test with its last error once timeout has
// passed.
func waitFor(t *testing.T, timeout time.Duration, what string, fn func() error) {
	t.Helper()
	if err := poll(timeout, fn); err != nil {
		t.Fatalf("timed out after %v waiting for %s: %v", timeout, what, err)
	}
}

// proc is one mcpd process writing stdout and stderr to logPath (appended
// across restarts).
type proc struct {
	name    string
	bin     string
	args    []string
	logPath string

	cmd   *exec.Cmd
	done  chan struct{} // closed once the process has exited
	state *os.ProcessState
}

// start launches the process. The caller registers the cleanup that kills it.
func (p *proc) start(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(p.bin, p.args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", p.name, err)
	}
	p.cmd, p.done, p.state = cmd, make(chan struct{}), nil
	go func(done chan struct{}) {
		cmd.Wait()
		p.state = cmd.ProcessState
		close(done)
	}(p.done)
}

func (p *proc) running() bool {
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	if !p.running() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// wait waits up to timeout for the process to exit by itself.
func (p *proc) wait(timeout time.Duration) (*os.ProcessState, bool) {
	select {
	case <-p.done:
		return p.state, true
	case <-time.After(timeout):
		return nil, false
	}
}

// logSize is the current length of the log, to read what a restart adds.
func (p *proc) logSize(t *testing.T) int64 {
	t.Helper()
	fi, err := os.Stat(p.logPath)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// logSince returns the log from byte offset off.
func (p *proc) logSince(t *testing.T, off int64) string {
	t.Helper()
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		t.Fatal(err)
	}
	return string(b[min(off, int64(len(b))):])
}

// tail returns the last n lines of the log.
func (p *proc) tail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return err.Error()
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// manage kills every process at the end of the test and, when the test
// failed, prints the tail of each log first.
func manage(t *testing.T, procs ...*proc) {
	t.Helper()
	t.Cleanup(func() {
		for _, p := range procs {
			p.kill()
		}
	})
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, p := range procs {
			state := "running"
			if !p.running() {
				state = "exited: " + p.state.String()
			}
			t.Logf("---- %s (%s), last lines of %s ----\n%s", p.name, state, p.logPath, p.tail(60))
		}
	})
}

// status is the JSON of /readyz and /healthz.
type status struct {
	Node    string `json:"node"`
	Role    string `json:"role"`
	Leader  string `json:"leader"` // null when no leader is known
	Applied uint64 `json:"applied"`
	Commit  uint64 `json:"commit"`
	Term    uint64 `json:"term"`
	Status  string `json:"status"`
	Reason  string `json:"reason"` // why /readyz is 503
	Ready   bool   `json:"-"`      // 200 from /readyz
}

// getJSON fetches http://ADDR+path within timeout, decodes the JSON body
// into v whatever the status, and returns the status code.
func getJSON(addr, path string, timeout time.Duration, v any) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return 0, fmt.Errorf("%s%s: %w", addr, path, err)
	}
	return resp.StatusCode, nil
}

// readyz fetches http://ADDR/readyz. A 503 is not an error: Ready is false.
func readyz(addr string) (status, error) {
	var s status
	code, err := getJSON(addr, "/readyz", 2*time.Second, &s)
	if err != nil {
		return status{}, err
	}
	s.Ready = code == http.StatusOK
	return s, nil
}

// waitReady waits until addr answers /readyz with 200.
func waitReady(t *testing.T, addr string, timeout time.Duration) status {
	t.Helper()
	var s status
	waitFor(t, timeout, "readyz on "+addr, func() error {
		var err error
		if s, err = readyz(addr); err != nil {
			return err
		}
		if !s.Ready {
			return fmt.Errorf("not ready: %+v", s)
		}
		return nil
	})
	return s
}
