package failover

// The role machine: who serves, in which epoch, and when that changes.
//
// This file is sans-I/O in the style of etcd's raft: it reads no clock,
// does no I/O and starts no goroutine. The driver (the code that owns the
// sync connection) feeds it the time and what happened — Tick, PeerMessage,
// PeerConnected, PeerDisconnected — then asks Ready what to do, does it,
// and calls Advance. Everything below is therefore testable with scripted
// times, and so it is (role_test.go), down to a simulation of two machines
// under random pauses, crashes and restarts.
//
// W below is the detection window, heartbeat_misses x heartbeat_timer, and
// I the interval, heartbeat_timer.
//
// # Roles
//
//	Backup      keeps the standby copy; serves nothing.
//	Joining     a node configured as main that has just started and does
//	            not yet know whether its peer already serves. It holds all
//	            client output. It becomes Main or Standalone (the peer is
//	            a backup, or nobody answered for W) or Backup (the peer
//	            already serves: a fresh process has no connections to
//	            lose, so it yields).
//	Main        serves, with a live backup: replication gates apply.
//	Standalone  serves without a backup: gates are open, it runs unprotected.
//	StoodDown   a former server that learned another node serves in a
//	            higher epoch. Terminal for the process (see below).
//
// Transitions:
//
//	Backup     -> Standalone  TakeOver, epoch+1: W + I/2 without a message
//	                          from a serving peer (2W if it never heard one);
//	                          or, at once, the main it followed shows up as
//	                          Joining: that main restarted, and its
//	                          connections live only here.
//	Joining    -> Main        a fresh PONG (below) from a Backup peer
//	Joining    -> Standalone  a fresh PONG from a StoodDown peer, or W with
//	                          nothing heard from the peer
//	Joining    -> Backup      a message from a serving peer
//	Main       -> Standalone  Unprotected: W + I/2 without a message from the
//	                          backup, or the peer says it is not a backup
//	                          (it restarted, or it serves)
//	Standalone -> Main        Protected: a message from a Backup peer
//	Main, Standalone -> StoodDown  StandDown: a serving peer with a higher
//	                          epoch, or an equal one and the tie-break goes
//	                          to the peer
//
// The half interval in W + I/2 is when a heartbeat due at the end of the
// window counts as missed: without it, with heartbeat_misses 1, every PONG
// would race the deadline it is meant to meet. Detection therefore comes
// at least W after the last message and, heartbeats being I apart, within
// W + I of the peer's death.
//
// A Joining start costs a lone main one window before it serves (3 s with
// the defaults), like VRRP's Master_Down_Interval; with a peer present it
// costs one round trip. In exchange a main restarted by a supervisor while
// its former backup serves, or while that backup holds its connections,
// never announces the service address over it; and the operator restarts a
// node with its own, unchanged configuration: it rejoins as backup by
// itself.
//
// A backup that lets a Joining peer start (it answers its PING as Backup)
// forfeits whatever it held from an earlier main, and a later "Joining"
// never makes it take over. Two backups (one restarted while the other
// followed a main that has since died) do not race: the one configured as
// backup waits while the one configured as main, which is alive, takes
// over by its own timer.
//
// StoodDown is terminal: the process's connection state is stale and some
// of it may be half-sent, so it must not become a backup in place. The
// driver logs, drops the service address, sends nothing more (the machine
// emits no heartbeats either) and exits; the operator or a supervisor
// restarts it with the same configuration and it comes back as a backup.
//
// # Epochs
//
// Every message carries the sender's epoch, and every takeover increments
// it. Any node that hears a higher epoch adopts it; a serving node that
// hears a higher epoch from a serving peer stands down at once (doc.go,
// "Roles and epochs"). From a peer that does not serve, a higher epoch
// means this process is a restarted one that forgot it (epochs start only
// at takeovers and there are two nodes, so the peer learned it from an
// earlier incarnation of this node): it adopts it and serves on.
//
// Two serving nodes with equal epochs are told apart by configuration: the
// node configured as main ("backup": false) keeps serving and the other
// stands down. If both have the same "backup" setting nothing tells them
// apart: both hold client output (never two client-visible nodes) and
// Ready.ConfigError says why, until one goes silent for W. Any message
// whose sender has our "backup" setting reports that ConfigError, once:
// the pair is misconfigured even when no tie arises (both would have the
// same node address, too).
//
// # Heartbeats: PING and PONG
//
// Heartbeats are PINGs, each with an id (1, 2, 3 ... per process), and every
// PING is answered at once with a PONG echoing its id. main_heartbeats only
// decides who initiates: with it the serving node pings every I and the
// backup answers; without it the backup pings and the main answers. So
// both directions carry something at least once per I in both
// configurations, and each side detects the other's death. Any
// authenticated message (HELLO, PING, PONG, replication data, SYNCACK)
// counts as proof of life.
//
// The answering side pings too in four cases, all cheap: while it holds
// its output (Joining, or suspecting after a pause: it waits for a PONG),
// every I; once when it takes over, to announce the new epoch; once after
// a pause; and when it has heard nothing for more than I. The last keeps
// both sides alive if the two nodes disagree about main_heartbeats (both
// would otherwise wait for the other, hear nothing, and both fail over).
//
// PINGs go out on a fixed grid (the session's start plus multiples of I),
// not "I after the last one", so they do not drift; a late tick sends one
// PING, not a burst.
//
// A PONG is fresh for a hold when it echoes a PING sent after the hold
// began. It is the only message that proves the peer's state is current:
// anything else may have waited in our buffers, and the peer's answer to
// our PING is written after it read what we said before it.
//
// # Pauses (SIGSTOP, a stalled VM, a starved process)
//
// This is the subtle part. A main frozen by SIGSTOP does not know it was
// frozen. When it wakes up its timers fire, the stack has segments queued
// from clients, and its socket buffers hold the peer's messages from before
// the backup took over, still saying "Backup, epoch e". If any of that
// turns into a frame to a client (an ARP reply for the service address, an
// RST for a connection only the new main knows) before the peer's new epoch
// is read, the stale main damages live connections. So:
//
//  1. The peer declares us dead after W + I/2 of silence, and while we run
//     we send it something at least every I. A pause of G therefore leaves
//     it up to G + I without news: pauses from W - I/2 on are dangerous.
//     The machine notices pauses of half that (at most I: above I for the
//     default 3 misses, above I/4 for 1 miss), and NextDeadline is never
//     more than half of that after the latest input, so that a running
//     driver's late tick is not taken for a pause.
//  2. Time spent paused does not count as silence from the peer: every
//     silence timer moves forward by the pause (less what a running node
//     may wait between ticks). The peer's messages wait in our buffers; we
//     just could not read them. Without this a frozen backup would take
//     over on wake-up from a live main, and a frozen main would drop its
//     backup.
//  3. If the pause may have made the peer declare us dead — it has heard
//     nothing from us for at least W - I/2: since our last PING or PONG,
//     or, if we were not connected, since the pause began (what came
//     before it was a partition, not the pause's doing) — the node
//     suspects: it pings at once (and every I while it suspects) and acts
//     on nothing irreversible until a fresh PONG (the answer to that PING
//     or a later one), or until the peer has been silent long enough that
//     nobody we could hear serves: 2W for a serving node, W for a backup.
//     Silence counts from the later of the wake-up and the peer's latest
//     message; any message restarts it, stale or not, but only a fresh
//     PONG ends the wait, or a message that decides by itself (a serving
//     peer with a higher epoch, or an equal one that wins the tie: stand
//     down at once).
//
//     A serving node holds all client output meanwhile; then the usual
//     rules apply to what the PONG says (stand down on a higher epoch,
//     else resume). It waits two windows because resuming is exactly what
//     the hold guards against: a node that resumes announces the service
//     address (gratuitous ARP), and if the peer took over and its answer
//     is merely late (on a saturated machine the delays that made us look
//     dead delay it too), the address flips back and forth and clients
//     stall for seconds. Waiting longer costs only when the peer is dead
//     as well. A backup waits one window, like any backup watching its
//     main (a running one takes over after W + I/2 of silence), and does
//     not take over meanwhile, and never on a "Joining" read from its
//     buffers: that node may have started alone while we did not answer.
//  4. After every pause a node pings at once, so that the peer learns it
//     is alive within a network delay.
//
// For the hold to be complete the decision must be fresh when a frame
// leaves: the Ready read before a SIGSTOP still says "serve" after it. The
// output path checks OutputLease, which runs out one pause threshold after
// the machine's latest input; past it, the frame waits for a Tick with a
// fresh clock reading.
//
// Limits. A pause the monotonic clock does not see (Linux's CLOCK_MONOTONIC
// stops during host suspend) is invisible here; the epoch rule still makes
// the stale node stand down when the first message of the new main
// arrives. The margins assume a one-way delay between the nodes well under
// I/4 with heartbeat_misses 1 (I/2 with 3). A partition is not a pause:
// both nodes run, neither hears the other, the backup takes over and the
// main goes Standalone. With two nodes and no witness that split brain
// cannot be avoided; when the partition heals the higher epoch wins.
//
// # Driver contract
//
//   - Pass times from one monotonic clock (time.Now()). A time earlier
//     than a previous one is treated as that previous time.
//   - Call Tick no later than NextDeadline (it may be the present).
//   - Call PeerConnected when a sync session is established (HELLOs
//     exchanged: the machine counts both as messages) and PeerDisconnected
//     when it ends. Pass messages of the current session only: a PONG left
//     over from an earlier session, perhaps from an earlier process of the
//     peer, would pass for fresh.
//   - PeerMessage gets the sender's epoch (frame header), role and "backup"
//     setting (as last stated in its HELLO, PING or PONG), and the PING id
//     or PONG echo when the frame is one. PING and PONG bodies therefore
//     carry the id and the sender's role; HELLO carries role and "backup".
//   - Client-visible frames leave only while HoldOutput is false and the
//     clock is before OutputLease (see "Pauses").
//   - After every input: Ready; send Ready.Ping and Ready.Pong at once with
//     the current role and epoch (Ready.Role, Ready.Epoch); carry out the
//     actions; Advance. Ready.Role, Ready.Epoch and Ready.HoldOutput are
//     the state to apply; the flags are one-time actions.

import (
	"errors"
	"fmt"
	"time"

	"github.com/zppratt/rfsis/config"
)

// Role is what a node does for the service. The zero value is invalid, so
// that a missing role in a decoded message is noticed.
type Role uint8

// The roles. The numeric values may appear on the wire; do not renumber.
const (
	// RoleBackup keeps the standby copy of every connection and serves
	// nothing.
	RoleBackup Role = iota + 1
	// RoleJoining is a node configured as main that has just started:
	// it holds client output until it learns whether its peer serves.
	RoleJoining
	// RoleMain serves clients and replicates to a live backup.
	RoleMain
	// RoleStandalone serves clients without a backup (unprotected).
	RoleStandalone
	// RoleStoodDown is a former server that learned it lost the role. It
	// serves nothing and sends nothing; the process should exit.
	RoleStoodDown
)

var roleNames = [...]string{
	RoleBackup:     "backup",
	RoleJoining:    "joining",
	RoleMain:       "main",
	RoleStandalone: "standalone",
	RoleStoodDown:  "stood-down",
}

func (r Role) String() string {
	if r.Valid() {
		return roleNames[r]
	}
	return fmt.Sprintf("Role(%d)", uint8(r))
}

// Valid reports whether r is one of the defined roles.
func (r Role) Valid() bool { return r >= RoleBackup && r <= RoleStoodDown }

// Serving reports whether the role owns the service address (Main or
// Standalone). A serving node may still hold its output; see
// RoleMachine.HoldOutput.
func (r Role) Serving() bool { return r == RoleMain || r == RoleStandalone }

// RoleConfig is the part of the configuration the role machine needs.
type RoleConfig struct {
	// StartAsBackup is config "backup": the node starts as RoleBackup;
	// otherwise it starts as RoleJoining. It also breaks ties (see the
	// file comment, "Epochs").
	StartAsBackup bool
	// MainHeartbeats is config "main_heartbeats": the serving node pings
	// and the backup answers; otherwise the backup pings.
	MainHeartbeats bool
	// Interval is config "heartbeat_timer"; must be > 0.
	Interval time.Duration
	// Misses is config "heartbeat_misses"; must be >= 1. The detection
	// window is Misses*Interval; a peer is declared dead after half an
	// Interval more without a message (the last heartbeat counts as
	// missed half an interval after it was due).
	Misses int
}

// NewRoleConfig takes the role machine's settings from a node's validated
// configuration.
func NewRoleConfig(c config.Config) RoleConfig {
	return RoleConfig{
		StartAsBackup:  c.Backup,
		MainHeartbeats: c.MainHeartbeats,
		Interval:       c.HeartbeatTimer,
		Misses:         c.HeartbeatMisses,
	}
}

// Window is the detection window, Misses*Interval: how long a node waits
// without hearing its peer before acting on it.
func (c RoleConfig) Window() time.Duration { return c.Interval * time.Duration(c.Misses) }

// PeerMsg is what the role machine needs from one authenticated message
// received from the peer.
type PeerMsg struct {
	// Epoch is the sender's epoch (every frame header has it).
	Epoch uint64
	// Role is the sender's role. Messages with an invalid role are
	// ignored: the decoder should have rejected them.
	Role Role
	// StartAsBackup is the sender's config "backup".
	StartAsBackup bool
	// Ping is the id of the PING this message is (0: not a PING). The
	// machine answers it with Ready.Pong.
	Ping uint64
	// Pong is the id of our PING this message answers (0: not a PONG).
	Pong uint64
}

// Ready is what the driver must do after an input. The action fields are
// each reported once (until Advance); the state fields are always set.
type Ready struct {
	// Ping, when not 0, asks the driver to send a PING with this id.
	Ping uint64
	// Pong, when not 0, asks the driver to send a PONG echoing this id
	// (the latest PING received; it answers the earlier ones too).
	Pong uint64

	// TakeOver: this backup now serves. Claim the service address, send
	// gratuitous ARPs, turn the standby connections live (doc.go,
	// "Takeover"). The role is Standalone until a backup joins.
	TakeOver bool
	// StandDown: another node serves in a higher epoch (or won a tie).
	// Send nothing more to anyone, drop the service address, log, exit.
	StandDown bool
	// Unprotected: the role went from Main to Standalone since the last
	// Ready; the backup is gone and the replication gates must open.
	Unprotected bool
	// Protected: the role became Main since the last Ready (a backup
	// joined or came back): replicate to it (a returning backup needs the
	// whole state again).
	Protected bool
	// Silence, with TakeOver or Unprotected, is how long the peer had
	// gone without a sign of life when the machine decided: the log's
	// answer to "why".
	Silence time.Duration
	// ConfigError, when not nil, reports that the peer is configured
	// with the same "backup" setting. It wraps ErrSameBackupSetting.
	ConfigError error

	// Role is the current role.
	Role Role
	// Epoch is the current epoch; every frame sent carries it.
	Epoch uint64
	// HoldOutput: nothing client-visible may leave this node: no frame
	// from the service address, no ARP answer for it, no RST. True for
	// every role except a Main or Standalone that is not holding.
	HoldOutput bool
}

// ErrSameBackupSetting is wrapped by Ready.ConfigError.
var ErrSameBackupSetting = errors.New(`failover: both nodes have the same "backup" setting`)

// actions are the pending one-time outputs.
type actions struct {
	ping, pong          uint64
	takeOver, standDown bool
	configErr           error
}

func (a actions) empty() bool { return a == actions{} }

// state is the part of Ready the driver applies as levels.
type state struct {
	role       Role
	epoch      uint64
	holdOutput bool
}

// RoleMachine decides the node's role from heartbeats and time. It is not
// safe for concurrent use; the driver serialises calls.
type RoleMachine struct {
	cfg      RoleConfig
	window   time.Duration // Misses*Interval
	detect   time.Duration // window + Interval/2: silence that means death
	interval time.Duration
	pauseGap time.Duration // a longer gap between inputs is a pause
	watch    time.Duration // NextDeadline is at most this after an input

	role  Role
	epoch uint64

	now       time.Time // the latest input time
	connected bool
	lastSent  time.Time // last PING, PONG or HELLO emitted while connected
	lastHeard time.Time // last message from the peer; zero if none

	// Silence timers. mainSeen: on a backup, the last message from a
	// serving peer (or when watching began). backupSeen: on a Main, the
	// last message from a Backup peer.
	mainSeen   time.Time
	backupSeen time.Time
	// silence is the silence behind the latest takeover or loss of the
	// backup (Ready.Silence).
	silence time.Duration
	sawMain bool // this backup has heard a serving peer

	// Holds. A Joining node always holds; suspect applies to any role.
	suspect   bool      // after a pause: waiting for a fresh PONG
	conflict  bool      // an unbreakable equal-epoch tie with the peer
	holdSince time.Time // when the current hold began
	holdPing  uint64    // a PONG echoing at least this id is fresh

	pingSeq  uint64
	pingAt   time.Time // when the pending PING was issued
	nextBeat time.Time

	pend      actions
	given     Ready // what the last Ready returned
	haveGiven bool
	base      state // the state as of the last Advance
	cfgErrSet bool  // ConfigError already reported
}

// NewRoleMachine returns a machine starting at now as RoleBackup (with
// cfg.StartAsBackup) or RoleJoining, epoch 0. It panics if Interval or
// Misses is out of range (config.Validate rules those out).
func NewRoleMachine(cfg RoleConfig, now time.Time) *RoleMachine {
	if cfg.Interval <= 0 || cfg.Misses < 1 {
		panic(fmt.Sprintf("failover: invalid RoleConfig: Interval %v, Misses %d", cfg.Interval, cfg.Misses))
	}
	m := &RoleMachine{
		cfg:      cfg,
		window:   cfg.Window(),
		detect:   cfg.Window() + cfg.Interval/2,
		interval: cfg.Interval,
		now:      now,
		nextBeat: now.Add(cfg.Interval),
	}
	// A pause of G leaves the peer up to G + Interval without news from
	// us (we send at least once per Interval), and it declares us dead
	// after detect: pauses from detect - Interval = window - Interval/2 on
	// are dangerous. Half that is noticed, one Interval at most; the
	// driver ticks twice as often, so a late tick is not taken for a
	// pause. With the default 3 misses: pauses over one Interval, ticks
	// every half; with 1 miss: a quarter and an eighth.
	m.pauseGap = min(cfg.Interval, (m.window-cfg.Interval/2)/2)
	m.watch = max(m.pauseGap/2, 1)
	if cfg.StartAsBackup {
		m.role = RoleBackup
		m.mainSeen = now
	} else {
		m.role = RoleJoining
		m.holdSince = now
		m.holdPing = 1 // the first PING this process sends
	}
	return m
}

// Role returns the current role.
func (m *RoleMachine) Role() Role { return m.role }

// Epoch returns the current epoch.
func (m *RoleMachine) Epoch() uint64 { return m.epoch }

// PeerUp reports whether a message from the peer arrived within the last
// detection window (as of the latest input).
func (m *RoleMachine) PeerUp() bool {
	return !m.lastHeard.IsZero() && m.now.Sub(m.lastHeard) < m.window
}

// HoldOutput reports whether client-visible output is forbidden now (see
// Ready.HoldOutput). Call Tick with a fresh time first.
func (m *RoleMachine) HoldOutput() bool {
	return !m.role.Serving() || m.suspect || m.conflict
}

// OutputLease returns the time until which client-visible output may leave
// without another input to the machine; zero while HoldOutput. A process
// that is paused past it may have been paused long enough for the peer to
// take over, so the output path compares the lease with the clock (an
// atomic load and a compare, cheap enough per frame) and, once it has
// passed, holds the frame until the driver has called Tick with a fresh
// time and renewed it. This is what keeps frames queued before a SIGSTOP
// from leaving on SIGCONT ahead of the role machine's verdict.
//
// The lease ends one pause threshold after the latest input: a pause
// shorter than that cannot let the peer take over (see "Pauses"), and the
// NextDeadline ticks of a running driver renew it twice within it.
func (m *RoleMachine) OutputLease() time.Time {
	if m.HoldOutput() {
		return time.Time{}
	}
	return m.now.Add(m.pauseGap)
}

// holding reports whether the node waits to learn whether it may serve.
func (m *RoleMachine) holding() bool {
	return m.role == RoleJoining || m.suspect || m.conflict
}

// --- Inputs ---

// Tick tells the machine that time has passed. Call it no later than
// NextDeadline, and right before releasing client-visible output.
func (m *RoleMachine) Tick(now time.Time) {
	now = m.observe(now)
	if m.role == RoleStoodDown {
		return
	}
	switch m.role {
	case RoleBackup:
		if !now.Before(m.takeOverAt()) {
			m.silence = now.Sub(m.mainSeen)
			m.takeOver()
		}
	case RoleMain:
		if !now.Before(m.backupSeen.Add(m.detect)) {
			m.silence = now.Sub(m.backupSeen)
			m.role = RoleStandalone
		}
	}
	if m.holding() && !now.Before(m.holdEnd()) {
		// A whole window without a word from the peer (two for a
		// serving node that suspects): nobody we could hear serves. A
		// Joining node starts alone; a suspecting or conflicted one
		// resumes.
		if m.role == RoleJoining {
			m.role = RoleStandalone
		}
		m.suspect, m.conflict = false, false
	}
	if !now.Before(m.nextBeat) {
		if m.beats(now) {
			m.ping()
		}
		// Stay on the grid; skip beats a late tick missed rather than
		// sending a burst.
		m.nextBeat = m.nextBeat.Add(m.interval * (now.Sub(m.nextBeat)/m.interval + 1))
	}
}

// PeerConnected reports that a sync session with the peer is established.
func (m *RoleMachine) PeerConnected(now time.Time) {
	now = m.observe(now)
	if m.role == RoleStoodDown {
		return
	}
	m.connected = true
	m.lastSent = now  // our HELLO
	m.lastHeard = now // and the peer's
	// A PONG still pending answers a PING of the previous session, maybe
	// of a previous process of the peer whose PING ids the new one reuses:
	// sent now, it would pass for the answer to the new process's PING.
	m.pend.pong = 0
	// Start the grid at the session, and ping at once if we initiate or
	// wait for an answer.
	m.nextBeat = now.Add(m.interval)
	if m.holding() || m.initiates() {
		m.ping()
	}
}

// PeerDisconnected reports that the sync session ended. It is not taken
// as a sign of death (a corrupt frame also drops the session); silence is.
func (m *RoleMachine) PeerDisconnected(now time.Time) {
	m.observe(now)
	m.connected = false
	m.pend.ping, m.pend.pong = 0, 0 // nowhere to send them
}

// PeerMessage reports an authenticated message from the peer.
func (m *RoleMachine) PeerMessage(now time.Time, msg PeerMsg) {
	now = m.observe(now)
	if m.role == RoleStoodDown || !msg.Role.Valid() {
		return
	}
	m.connected = true // it came over a session
	m.lastHeard = now
	if msg.StartAsBackup == m.cfg.StartAsBackup && !m.cfgErrSet {
		m.cfgErrSet = true
		m.pend.configErr = fmt.Errorf("%w (%t on both): one node must be the backup, the other the main",
			ErrSameBackupSetting, m.cfg.StartAsBackup)
	}
	if msg.Ping != 0 {
		m.pend.pong = max(m.pend.pong, msg.Ping)
		m.lastSent = now
	}
	fresh := msg.Pong != 0 && msg.Pong >= m.holdPing

	if msg.Epoch > m.epoch {
		m.epoch = msg.Epoch
		// Another server in a later epoch: we are the stale one. (A
		// non-serving peer with a higher epoch learned it from an earlier
		// incarnation of this node — epochs start only at takeovers, and
		// there are two nodes — so this process, which forgot it on
		// restart, simply adopts it.)
		if m.role.Serving() && msg.Role.Serving() {
			m.standDown()
			return
		}
	}
	switch m.role {
	case RoleBackup:
		switch {
		case msg.Role.Serving() && msg.Epoch == m.epoch:
			m.sawMain = true
			m.mainSeen = now
		case msg.Role == RoleBackup && !(msg.StartAsBackup && !m.cfg.StartAsBackup):
			// Two backups and no main (say this node restarted while the
			// other followed a main that has since died): the node
			// configured as main takes over, by its own timer, and this
			// one waits for it rather than race it into an epoch tie. If
			// both have the same setting (ConfigError), neither does
			// while the other is alive.
			m.mainSeen = now
		case msg.Role == RoleJoining && m.sawMain && !m.suspect:
			// The main we followed is a new process: its connections
			// exist only here.
			m.takeOver()
			return
		case msg.Role == RoleJoining:
			// We let it start (our PONG will say Backup): whatever we
			// held from an earlier main is forfeit, and a later
			// "Joining" must not make us take over behind its back. A
			// suspecting backup lands here too: the "Joining" may have
			// waited in our buffers while that node started alone. And
			// give it time to start and be heard before any timer of
			// ours makes us serve over it.
			m.sawMain = false
			m.mainSeen = now
		}
		// A serving peer with a lower epoch is stale and will stand down
		// when it hears us; it proves no main alive.
		if m.suspect && fresh {
			m.suspect = false
		}
	case RoleJoining:
		switch {
		case msg.Role.Serving() && msg.Epoch == m.epoch:
			// Whoever already serves keeps serving: we have nothing to
			// lose.
			m.role = RoleBackup
			m.sawMain = true
			m.mainSeen = now
		case fresh && msg.Role == RoleBackup:
			m.role = RoleMain
			m.backupSeen = now
		case fresh && msg.Role == RoleStoodDown:
			m.role = RoleStandalone
		}
		// Otherwise keep holding: a Backup that has not answered our
		// PING may still take over; a Joining peer is configured as main
		// too (ConfigError).
	case RoleMain, RoleStandalone:
		if m.servingHears(now, msg) {
			return
		}
		if m.suspect && fresh {
			m.suspect = false
		}
	}
}

// PeerActivity tells the machine that bytes from the peer arrived at at in
// the current session, not yet read. They prove the peer's process alive
// (a frozen or dead one sends nothing) even when this node, busy, has not
// parsed them yet; so they defer the silence timers of a backup watching
// its main and of a main watching its backup, and nothing else: what the
// peer says is learned when the bytes are read (PeerMessage).
func (m *RoleMachine) PeerActivity(now, at time.Time) {
	now = m.observe(now)
	if !m.connected || m.role == RoleStoodDown {
		return
	}
	if at.After(now) {
		at = now
	}
	switch {
	case m.role == RoleBackup && m.sawMain && at.After(m.mainSeen):
		m.mainSeen = at
	case m.role == RoleMain && at.After(m.backupSeen):
		m.backupSeen = at
	}
}

// PeerUnapplied tells the machine that the reader holds bytes from the
// peer it has not applied yet. The main counts bytes our TCP has
// acknowledged as held (its gates open on the sync connection's
// acknowledgements), so a backup must not take over before applying
// them, however stale they are: takeover waits until the reader catches
// up. Unlike PeerActivity this holds whether or not the backup has yet
// read that its peer is the main.
func (m *RoleMachine) PeerUnapplied(now time.Time) {
	now = m.observe(now)
	if m.connected && m.role == RoleBackup && now.After(m.mainSeen) {
		m.mainSeen = now
	}
}

// servingHears applies a message with an epoch not above ours to a
// serving node. It reports whether the node stood down.
func (m *RoleMachine) servingHears(now time.Time, msg PeerMsg) bool {
	switch {
	case msg.Role == RoleBackup:
		m.backupSeen = now
		m.role = RoleMain
		m.conflict = false
	case msg.Role.Serving() && msg.Epoch == m.epoch:
		switch {
		case msg.StartAsBackup == m.cfg.StartAsBackup:
			// Nothing tells the two apart: neither may be visible.
			if !m.conflict {
				m.conflict = true
				m.holdSince = now
			}
		case m.cfg.StartAsBackup:
			m.standDown()
			return true
		default:
			m.conflict = false // we are the configured main: we stay
		}
		m.unprotect()
	default:
		// Joining (our backup restarted), StoodDown, or a stale server
		// with a lower epoch: in any case not our backup.
		m.conflict = false
		m.unprotect()
	}
	return false
}

// observe records now and handles a pause (see the file comment, "Pauses").
// It returns now, or the previous input time if now is earlier.
func (m *RoleMachine) observe(now time.Time) time.Time {
	if now.Before(m.now) {
		now = m.now
	}
	gap := now.Sub(m.now)
	m.now = now
	if m.role == RoleStoodDown || gap <= m.pauseGap {
		return now
	}
	// Only what a running node may wait between calls counts as silence.
	shift := gap - m.watch
	for _, t := range [...]*time.Time{&m.mainSeen, &m.backupSeen, &m.holdSince, &m.lastHeard} {
		if !t.IsZero() {
			*t = t.Add(shift)
		}
	}
	// How long the peer may have gone without hearing from us. When not
	// connected, what came before the pause is a partition, not the
	// pause's doing.
	silent := gap
	if m.connected {
		silent = now.Sub(m.lastSent)
	}
	if silent >= m.window-m.interval/2 {
		// The peer may have acted on our silence, and what waits in our
		// buffers predates that: act on nothing irreversible until the
		// answer to the PING below. A serving node holds its output; a
		// backup does not take over on a "Joining" it may have read late
		// (the peer may have started alone since); a Joining node wants
		// a newer answer.
		if m.role != RoleJoining {
			m.suspect = true
		}
		m.holdSince = now
		m.holdPing = m.pingSeq + 1
	}
	m.ping() // tell the peer we are back
	return now
}

// --- Outputs ---

// NextDeadline returns when Tick must be called next, at the latest; zero
// once the node has stood down. It may be the present (due now). It is
// never further than Interval/2 after the latest input (less with fewer
// than 3 misses), which is what lets a pause show (see "Pauses").
func (m *RoleMachine) NextDeadline() time.Time {
	if m.role == RoleStoodDown {
		return time.Time{}
	}
	d := m.now.Add(m.watch)
	earliest := func(t time.Time) {
		if t.Before(d) {
			d = t
		}
	}
	earliest(m.nextBeat)
	switch m.role {
	case RoleBackup:
		earliest(m.takeOverAt())
	case RoleMain:
		earliest(m.backupSeen.Add(m.detect))
	}
	if m.holding() {
		earliest(m.holdEnd())
	}
	if d.Before(m.now) {
		d = m.now // already due
	}
	return d
}

// HasReady reports whether Ready has anything new since the last Advance.
func (m *RoleMachine) HasReady() bool {
	return !m.pend.empty() || m.state() != m.base
}

// Ready returns what to do now. It does not change the machine; Advance
// acknowledges it.
func (m *RoleMachine) Ready() Ready {
	s := m.state()
	rd := Ready{
		Ping:        m.pend.ping,
		Pong:        m.pend.pong,
		TakeOver:    m.pend.takeOver,
		StandDown:   m.pend.standDown,
		ConfigError: m.pend.configErr,
		Silence:     m.silence,
		// Protection changes are reported against what the driver last
		// saw, so Main->Standalone->Main between two Readys is nothing
		// to do for the gates.
		Protected:   s.role == RoleMain && m.base.role != RoleMain,
		Unprotected: s.role == RoleStandalone && m.base.role == RoleMain,
		Role:        s.role,
		Epoch:       s.epoch,
		HoldOutput:  s.holdOutput,
	}
	m.given, m.haveGiven = rd, true
	return rd
}

// Advance acknowledges the last Ready: its actions are done and its state
// applied. Actions that arose after that Ready stay pending.
func (m *RoleMachine) Advance() {
	if !m.haveGiven {
		return
	}
	g := m.given
	if g.Ping != 0 && m.pend.ping == g.Ping {
		m.pend.ping = 0
	}
	if g.Pong != 0 && m.pend.pong == g.Pong {
		m.pend.pong = 0
	}
	if g.TakeOver {
		m.pend.takeOver = false
	}
	if g.StandDown {
		m.pend.standDown = false
	}
	if g.ConfigError != nil {
		m.pend.configErr = nil
	}
	m.base = state{g.Role, g.Epoch, g.HoldOutput}
	m.haveGiven = false
}

// --- Internals ---

func (m *RoleMachine) state() state {
	return state{m.role, m.epoch, m.HoldOutput()}
}

// initiates reports whether this node sends the periodic PING.
func (m *RoleMachine) initiates() bool {
	if m.cfg.MainHeartbeats {
		return m.role.Serving()
	}
	return m.role == RoleBackup
}

// beats reports whether to ping at a grid point.
func (m *RoleMachine) beats(now time.Time) bool {
	return m.holding() || m.initiates() ||
		m.lastHeard.IsZero() || now.Sub(m.lastHeard) > m.interval
}

func (m *RoleMachine) ping() {
	if !m.connected || m.role == RoleStoodDown {
		return
	}
	if m.pend.ping >= max(m.holdPing, 1) && m.pingAt.Equal(m.now) {
		return // one PING per instant is enough
	}
	m.pingAt = m.now
	m.pingSeq++
	m.pend.ping = m.pingSeq
	m.lastSent = m.now
}

// takeOverAt is when a backup takes over if nothing changes. A backup that
// has never heard a serving peer waits two windows: at a cold start the
// node configured as main, which waits one, gets there first. A backup
// that suspects (after a pause) first listens for a window: its peer may
// have started serving alone while it was paused, and its messages are
// still to be read.
func (m *RoleMachine) takeOverAt() time.Time {
	t := m.mainSeen.Add(m.detect)
	if !m.sawMain {
		t = m.mainSeen.Add(2 * m.window)
	}
	if m.suspect {
		if h := m.holdEnd(); h.After(t) {
			t = h
		}
	}
	return t
}

// holdEnd is when a hold ends for want of any word from the peer.
// Silence is counted from the hold's start or the peer's latest message,
// whichever is later: any message, stale or not, shows the peer's side
// is still talking, and whatever it says next may decide (see "Pauses",
// rule 3). A serving node that suspects waits two windows, everything
// else one.
func (m *RoleMachine) holdEnd() time.Time {
	t := m.holdSince
	if m.lastHeard.After(t) {
		t = m.lastHeard
	}
	if m.suspect && m.role.Serving() {
		return t.Add(2 * m.window)
	}
	return t.Add(m.window)
}

func (m *RoleMachine) takeOver() {
	m.epoch++
	m.role = RoleStandalone
	m.suspect = false
	m.pend.takeOver = true
	m.ping() // announce the new epoch
}

func (m *RoleMachine) unprotect() {
	if m.role == RoleMain {
		m.role = RoleStandalone
	}
}

func (m *RoleMachine) standDown() {
	m.role = RoleStoodDown
	m.suspect, m.conflict = false, false
	m.pend.standDown = true
	m.pend.ping, m.pend.pong = 0, 0 // a stood-down node sends nothing
	if m.pend.takeOver && !(m.haveGiven && m.given.TakeOver) {
		// Taken over and lost again before the driver heard of it:
		// there is nothing to claim.
		m.pend.takeOver = false
	}
}
