// Package progtest builds the project's programs for tests that run them
// as processes (kill -9 and SIGSTOP must hit a whole program with its own
// stack, as they would an operator's), and is the TestMain of such test
// packages.
package progtest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

// goTool is the go command: `go test` puts its GOROOT/bin first on PATH.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(os.Getenv("GOROOT"), "bin", "go")
}

// ModuleRoot is the directory of the rfsis module's go.mod. Tests run in
// their package's directory; paths a person gives relative to the
// repository are resolved against this.
func ModuleRoot() (string, error) {
	gomod, err := exec.Command(goTool(), "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(gomod))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the rfsis module (go env GOMOD is empty); run the tests with go test")
	}
	return filepath.Dir(mod), nil
}

// Build builds the module's package pkg (for example ./cmd/echoserver)
// into dir and returns the binary's path; race builds it with -race.
func Build(dir, pkg string, race bool) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, filepath.Base(pkg))
	args := []string{"build", "-buildvcs=false", "-o", out}
	if race {
		args = append(args, "-race")
	}
	cmd := exec.Command(goTool(), append(args, pkg)...)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s in %s: %w\n%s", pkg, root, err, b)
	}
	return out, nil
}

// CheckOutput fails the test (t.Errorf) if a program's output holds a
// panic, a fatal runtime error or a race report: such a program failed
// even when its clients saw nothing wrong. who names the program.
func CheckOutput(t testing.TB, who, out string) {
	t.Helper()
	for _, bad := range []string{"WARNING: DATA RACE", "panic:", "fatal error:"} {
		if strings.Contains(out, bad) {
			t.Errorf("%s output contains %q", who, bad)
		}
	}
}

// Main is the TestMain of a package whose tests run cmd/echoserver: it
// builds it (or takes the binary named by $<prefix>_ECHOSERVER; with
// $<prefix>_RACE_SERVER set it builds with -race) into *bin, or records
// why not in *buildErr for the tests to report; runs the tests; checks
// for leaked goroutines; removes the build and exits.
func Main(m *testing.M, prefix string, bin *string, buildErr *error) {
	dir, err := os.MkdirTemp("", strings.ToLower(prefix)+"-")
	if err != nil {
		fmt.Fprintln(os.Stderr, prefix+":", err)
		os.Exit(1)
	}
	if b := os.Getenv(prefix + "_ECHOSERVER"); b != "" {
		*bin = b
	} else {
		*bin, *buildErr = Build(dir, "./cmd/echoserver", os.Getenv(prefix+"_RACE_SERVER") != "")
	}
	code := m.Run()
	if code == 0 {
		// Not goleak.VerifyTestMain: it exits itself, and the build
		// directory must be removed first.
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, prefix+": goroutine leak:", err)
			code = 1
		}
	}
	os.RemoveAll(dir)
	os.Exit(code)
}
