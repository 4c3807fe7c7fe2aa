package takeover

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/zppratt/rfsis/internal/netns"
)

// Log lines the harness and the tests wait for, as failover/node.go and
// cmd/echoserver write them.
const (
	LogServing     = "serving the service address"
	LogProtected   = "backup joined"
	LogTookOver    = "took over the service"
	LogUnprotected = "backup lost: serving unprotected"
	LogStandDown   = "standing down"
)

const (
	// EchoPort is the service port.
	EchoPort = 8080
	// syncKey is the shared key of the pair: 32 characters, the same on
	// both nodes.
	syncKey = "rfsis-takeover-test-key-32-chars"
	// Heartbeat and Misses are the settings: detection within
	// 30 ms of the main's last heartbeat.
	Heartbeat = 10 * time.Millisecond
	Misses    = 3
)

// ErrStartRace is the start-up race of Pair.AddBackup: the backup took
// the service over from the live main instead of joining it.
var ErrStartRace = errors.New("start-up race: the backup took over from the live main before its sync connection was up")

// Pair is a main (node 0) and a backup (node 1) running cmd/echoserver in
// a two-node topology. Set the exported configuration fields, then call
// Start (or StartMain and AddBackup).
type Pair struct {
	TP    *netns.Topology
	Bin   string // the cmd/echoserver binary
	Dir   string // where the nodes' config files are written
	Debug bool   // run both nodes with debug_mode true
	// Misses is heartbeat_misses for both nodes; Misses (3) when 0.
	Misses int
	// Crash is the signal of the Kill fault; SIGKILL when nil.
	Crash os.Signal

	Main   *netns.Process
	Backup *netns.Process
	// BackupMAC is the backup stack's Ethernet address, from its log (set
	// by StartRetrying): after a takeover the client's neighbour entry
	// for the service address must point to it.
	BackupMAC string
}

// Service is the address clients dial.
func (p *Pair) Service() string {
	return fmt.Sprintf("%s:%d", p.TP.ServiceAddr(), EchoPort)
}

// WriteConfig writes the main's or the backup's config.json into dir (as
// main.json or backup.json): the same service address, main_addr,
// backup_addr and sync_key on both; only "backup" differs.
func WriteConfig(dir string, tp *netns.Topology, backup, debug bool, misses int) (string, error) {
	if misses == 0 {
		misses = Misses
	}
	cfg := map[string]any{
		"backup":           backup,
		"ipv4_addr":        tp.ServiceAddr().String(),
		"main_addr":        tp.NodeAddr(0).String(),
		"backup_addr":      tp.NodeAddr(1).String(),
		"port":             EchoPort,
		"netmask":          "255.255.255.0",
		"tap_device_name":  netns.NodeTAP,
		"heartbeat_timer":  Heartbeat.Seconds(),
		"heartbeat_misses": misses,
		"sync_key":         syncKey,
		"debug_mode":       debug,
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return "", fmt.Errorf("config: %w", err)
	}
	name := "main.json"
	if backup {
		name = "backup.json"
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return "", fmt.Errorf("config: %w", err)
	}
	return path, nil
}

// StartNode starts a new echoserver process as the main (node 0) or the
// backup (node 1). It does not wait for anything.
func (p *Pair) StartNode(backup bool) (*netns.Process, error) {
	cfg, err := WriteConfig(p.Dir, p.TP, backup, p.Debug, p.Misses)
	if err != nil {
		return nil, err
	}
	node := p.TP.Node(0)
	if backup {
		node = p.TP.Node(1)
	}
	return node.Start(context.Background(), p.Bin, "-config", cfg)
}

// StartMain starts the main alone and waits until it serves: alone, it
// serves (Standalone) after one detection window.
func (p *Pair) StartMain(ctx context.Context) error {
	var err error
	if p.Main, err = p.StartNode(false); err != nil {
		return err
	}
	return p.Main.WaitOutput(ctx, LogServing)
}

// AddBackup starts the backup and waits for the main's next "backup
// joined". It returns ErrStartRace when the backup took over instead.
func (p *Pair) AddBackup(ctx context.Context) error {
	joined := p.Joins()
	var err error
	if p.Backup, err = p.StartNode(true); err != nil {
		return err
	}
	return p.WaitJoined(ctx, joined)
}

// Joins is how many times the main has logged "backup joined" so far.
func (p *Pair) Joins() int { return strings.Count(p.Main.Output(), LogProtected) }

// WaitJoined waits until the main has logged "backup joined" more than
// before times (Joins before the backup was started or resumed), or the
// backup took the service over instead (ErrStartRace), whichever comes
// first. It fails when ctx ends or either node exits first.
func (p *Pair) WaitJoined(ctx context.Context, before int) error {
	var gone error // a node exited: said once the logs are read again
	for {
		switch {
		case strings.Contains(p.Backup.Output(), LogTookOver):
			return ErrStartRace
		case p.Joins() > before:
			return nil
		case gone != nil:
			return gone
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the main never reported its backup: %w", ctx.Err())
		case <-p.Main.Done():
			gone = exited("the main, while waiting for its backup,", p.Main)
		case <-p.Backup.Done():
			gone = exited("the backup, before joining,", p.Backup)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// exited is the error of a node that exited while it should not.
func exited(who string, proc *netns.Process) error {
	if err := proc.Wait(); err != nil {
		return fmt.Errorf("%s exited: %w", who, err)
	}
	return fmt.Errorf("%s exited (status 0)", who)
}

// Start starts the main, then the backup, and returns once the main says
// its backup joined, so that every connection opened afterwards is
// replicated. The main goes first: in the other order the lone backup
// takes the service after its window, and the main, when it comes, must
// yield.
func (p *Pair) Start(ctx context.Context) error {
	if err := p.StartMain(ctx); err != nil {
		return err
	}
	return p.AddBackup(ctx)
}

// StartRetrying is Start, restarting the pair (up to attempts times in
// all) after the start-up race, each time within 20 s; logf reports each
// race. It then reads BackupMAC from the backup's log.
//
// A backup that cannot reach the main within one detection window (30 ms)
// of its start takes the service over, and the main then stands down. On
// this topology that happens when the backup's first frames (the ARP and
// SYN of its sync connection) are sent before its TAP's bridge port is
// forwarding: the kernel enables the port a few milliseconds after the
// process attaches to the TAP, and the stack retries only after its 1 s
// SYN timeout. Where that race is not what is measured, a restart is the
// right answer (TestBackupRestartWhileMainServes is about the race).
func (p *Pair) StartRetrying(ctx context.Context, attempts int, logf func(format string, args ...any)) error {
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, 20*time.Second)
		err := p.Start(actx)
		cancel()
		if err == nil {
			break
		}
		if !errors.Is(err, ErrStartRace) || attempt >= attempts {
			return fmt.Errorf("starting the pair (attempt %d): %w", attempt, err)
		}
		logf("attempt %d: %v; restarting the pair", attempt, err)
		p.Kill()
	}
	m := regexp.MustCompile(`"stack up".* mac=(\S+)`).FindStringSubmatch(p.Backup.Output())
	if m == nil {
		return errors.New("no MAC in the backup's \"stack up\" line")
	}
	p.BackupMAC = m[1]
	return nil
}

// Kill kills both nodes (SIGKILL) and waits for them.
func (p *Pair) Kill() {
	for _, proc := range []*netns.Process{p.Main, p.Backup} {
		if proc != nil {
			proc.Kill()
			<-proc.Done()
		}
	}
}

// RolesChanged reports whether the pair is no longer the main and backup
// it started as: the backup took over, or the main lost its backup or
// stood down.
func (p *Pair) RolesChanged() bool {
	mainOut, backupOut := p.Main.Output(), p.Backup.Output()
	return strings.Contains(backupOut, LogTookOver) || strings.Contains(mainOut, LogUnprotected) ||
		strings.Contains(mainOut, LogStandDown)
}

// RoleLines picks the role and address changes out of both nodes' logs,
// to say what happened to the pair.
func (p *Pair) RoleLines() string {
	return "main:\n" + roleLines(p.Main.Output()) + "\nbackup:\n" + roleLines(p.Backup.Output())
}

// roleLines picks the role and address changes out of a node's log.
func roleLines(out string) string {
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		for _, k := range []string{LogTookOver, LogUnprotected, LogProtected, LogStandDown, "holding the service", LogServing, "address conflict", "sync: "} {
			if strings.Contains(l, k) {
				keep = append(keep, "  "+l)
				break
			}
		}
	}
	return strings.Join(keep, "\n")
}

// Fault is a way of taking the main out of service.
type Fault string

// The faults of the acceptance tests and of the failover benchmark.
const (
	// Kill is kill -9 of the main (or Pair.Crash).
	Kill Fault = "kill"
	// LinkDown is the main's uplink taken down at the switch: the main
	// lives on but hears nobody.
	LinkDown Fault = "link-down"
	// Stop is SIGSTOP of the main: it freezes with its sockets and TAP
	// open, as a hung node does (Resume sends SIGCONT).
	Stop Fault = "stop"
)

// Faults are all the faults, in report order.
var Faults = []Fault{Kill, LinkDown, Stop}

// Label is the fault's name for people.
func (f Fault) Label() string {
	switch f {
	case Kill:
		return "kill -9"
	case LinkDown:
		return "link down"
	case Stop:
		return "SIGSTOP"
	}
	return string(f)
}

// Inject hits the main with f.
func (p *Pair) Inject(f Fault) error {
	switch f {
	case Kill:
		sig := p.Crash
		if sig == nil {
			sig = syscall.SIGKILL
		}
		return p.Main.Signal(sig)
	case LinkDown:
		return p.TP.LinkDown(p.TP.Node(0))
	case Stop:
		return p.Main.Stop()
	}
	return fmt.Errorf("unknown fault %q", f)
}
