package netns

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Process is a program started inside a namespace by NS.Start. Its stdout
// and stderr are captured together (Output); the test's cleanup kills it
// with SIGKILL if it is still running and, when the test failed, logs the
// end of its output.
type Process struct {
	name string
	ns   *NS
	cmd  *exec.Cmd
	out  outBuf

	done chan struct{} // closed once the process has been reaped
	err  error         // Wait's result; valid after done
}

// Start runs a program inside the namespace, like exec.CommandContext
// (ctx ending kills it). It goes through `ip netns exec`, which execs the
// program, so Pid is the program's own pid: kill -9 and SIGSTOP faults reach
// the program itself. Name is looked up on PATH.
func (ns *NS) Start(ctx context.Context, name string, args ...string) (*Process, error) {
	return ns.StartCmd(exec.CommandContext(ctx, name, args...))
}

// StartCmd is Start for a prepared command, to set Dir, Env, Stdin, Cancel
// and so on. Its Path and Args are rewritten to run through
// `ip netns exec`. If cmd.Stdout or cmd.Stderr is set, output goes there as
// well as to the capture. SysProcAttr is replaced.
func (ns *NS) StartCmd(cmd *exec.Cmd) (*Process, error) {
	if cmd.Err != nil {
		return nil, cmd.Err
	}
	ipPath, err := exec.LookPath("ip")
	if err != nil {
		return nil, fmt.Errorf("netns: %w", err)
	}
	p := &Process{name: cmd.Path, ns: ns, cmd: cmd, done: make(chan struct{})}
	if len(cmd.Args) > 0 {
		p.name = cmd.Args[0]
	}
	args := []string{"ip", "netns", "exec", ns.name, cmd.Path}
	if len(cmd.Args) > 1 {
		args = append(args, cmd.Args[1:]...)
	}
	cmd.Path, cmd.Args = ipPath, args
	cmd.Stdout = teeTo(cmd.Stdout, &p.out)
	cmd.Stderr = teeTo(cmd.Stderr, &p.out)
	// If the test binary dies (a panic, -timeout), its children must not
	// live on holding namespaces and ports. Pdeathsig fires when the
	// *thread* that forked exits, not the process, so the fork is done from
	// a goroutine locked to its thread until the child is reaped: that
	// thread cannot exit before the child, except with the whole process.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if cmd.WaitDelay == 0 {
		// A grandchild still holding the output pipe must not keep Wait
		// (and so the test's cleanup) blocked once the program is dead.
		cmd.WaitDelay = 2 * time.Second
	}

	own := ns.own
	own.mu.Lock()
	defer own.mu.Unlock()
	if own.closed {
		return nil, fmt.Errorf("netns %s: %w", ns.name, ErrClosed)
	}
	if err := ns.alive(); err != nil {
		return nil, err
	}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("netns: start %s in %s: %w", p.name, ns.name, err)
	}
	own.procs = append(own.procs, p)
	return p, nil
}

func teeTo(w io.Writer, buf *outBuf) io.Writer {
	if w == nil {
		return buf
	}
	return io.MultiWriter(w, buf)
}

// Pid is the program's process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Signal sends sig to the process. It returns os.ErrProcessDone once the
// process has exited; os.Process signals through a pidfd, so a reaped pid
// reused by someone else is never hit.
func (p *Process) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Kill sends SIGKILL (kill -9) and returns without waiting; see Wait.
func (p *Process) Kill() error { return p.Signal(syscall.SIGKILL) }

// Stop sends SIGSTOP: the process freezes, its sockets and TAP stay open,
// as with a hung node.
func (p *Process) Stop() error { return p.Signal(syscall.SIGSTOP) }

// Cont sends SIGCONT to resume a stopped process.
func (p *Process) Cont() error { return p.Signal(syscall.SIGCONT) }

// Wait waits for the process to exit and returns what exec.Cmd.Wait
// returned. It may be called any number of times, from any goroutine.
func (p *Process) Wait() error {
	<-p.done
	return p.err
}

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Output is everything the process wrote to stdout and stderr so far.
func (p *Process) Output() string { return p.out.String() }

// WaitOutput waits until the process's output contains s (a "listening"
// line, say). It fails if ctx ends or the process exits first.
func (p *Process) WaitOutput(ctx context.Context, s string) error {
	for {
		ok, changed := p.out.contains(s)
		if ok {
			return nil
		}
		select {
		case <-changed:
		case <-p.done:
			if ok, _ := p.out.contains(s); ok {
				return nil
			}
			return fmt.Errorf("netns: %s (pid %d) exited (%v) before printing %q; output:\n%s", p.name, p.Pid(), p.err, s, p.tail(4<<10))
		case <-ctx.Done():
			return fmt.Errorf("netns: waiting for %q from %s (pid %d): %w", s, p.name, p.Pid(), ctx.Err())
		}
	}
}

// kill is cleanup's SIGKILL; a stopped process dies from it too.
func (p *Process) kill() {
	if err := p.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		p.ns.own.t.Errorf("netns: kill %s (pid %d): %v", p.name, p.Pid(), err)
	}
}

func (p *Process) tail(n int) string {
	s := p.out.String()
	if len(s) > n {
		s = "..." + s[len(s)-n:]
	}
	return s
}

// outBuf collects output and wakes WaitOutput on every write.
type outBuf struct {
	mu      sync.Mutex
	b       strings.Builder
	changed chan struct{}
}

func (o *outBuf) Write(b []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.b.Write(b)
	if o.changed != nil {
		close(o.changed)
		o.changed = nil
	}
	return len(b), nil
}

func (o *outBuf) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.String()
}

// contains reports whether s is in the output, and otherwise returns a
// channel closed by the next write.
func (o *outBuf) contains(s string) (bool, <-chan struct{}) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if strings.Contains(o.b.String(), s) {
		return true, nil
	}
	if o.changed == nil {
		o.changed = make(chan struct{})
	}
	return false, o.changed
}

// Capture, when dir is not empty, runs tcpdump on dev inside the namespace
// for the rest of the test, writing headers (128 bytes of each frame) to
// <dir>/<test>-<role>.pcap; it returns once tcpdump listens. Captures of
// several members show where a frame went missing (the switch dropped it:
// it is in one file and not the other) and what each one sent when. It
// skips the test when tcpdump is missing; any other failure is fatal.
func (ns *NS) Capture(t testing.TB, dev, dir string) {
	t.Helper()
	if dir == "" {
		return
	}
	RequireTools(t, "tcpdump")
	name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()) + "-" + ns.Role() + ".pcap"
	file := filepath.Join(dir, name)
	p, err := ns.Start(context.Background(), "tcpdump", "-Z", "root", "-i", dev, "-U", "--immediate-mode", "-s", "128", "-w", file)
	if err != nil {
		t.Fatalf("netns: capture: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.WaitOutput(ctx, "listening on"); err != nil {
		t.Fatalf("netns: capture: %v", err)
	}
	t.Cleanup(func() {
		p.Signal(os.Interrupt)
		select {
		case <-p.Done():
		case <-time.After(5 * time.Second):
		}
		t.Logf("capture: %s: %s", file, p.Output())
	})
}
