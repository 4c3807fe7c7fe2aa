#!/usr/bin/env bash
# bridge.sh: put RFSIS's TAP device on the host's LAN.
#
# The user-space stack sends and receives Ethernet frames on a TAP device.
# To make it a peer of the other machines on the LAN, the TAP and the
# host's uplink (e.g. eth0) become ports of one bridge (br0). The host's own
# IPv4 addresses and routes move from the uplink to the bridge, because a
# bridge port no longer receives IP traffic for itself; the host keeps its
# connectivity.
#
#   sudo ./bridge.sh [-u UPLINK] [-t TAP] [-b BRIDGE]          set up
#   sudo ./bridge.sh [-u UPLINK] [-t TAP] [-b BRIDGE] --down   undo
#
# Defaults: UPLINK=eth0 TAP=tap0 BRIDGE=br0 (the environment variables of the
# same names override them; options override both).
#
# Up: creates the TAP (persistent, so it survives between runs of the stack)
# and the bridge if missing, gives the bridge the uplink's MAC (so the host
# keeps its identity on the LAN: DHCP reservations, neighbours' ARP caches),
# adds the uplink and the TAP to the bridge, brings everything up, and moves
# the uplink's IPv4 addresses and main-table routes (default route included)
# to the bridge.
# Down: moves the bridge's IPv4 addresses and routes back to the uplink and
# deletes the bridge and the TAP.
# Both are idempotent: running them again changes nothing and succeeds.
#
# Caveats: only IPv4 is moved (IPv6 link-local and SLAAC addresses appear on
# the bridge by themselves; static global IPv6 addresses must be moved by
# hand). Only the main routing table is moved. A network manager or DHCP
# client that manages the uplink will fight this script; for a permanent
# setup, declare the bridge in the network manager instead. Over SSH there is
# a short interruption while the addresses move, so run it in one go (not
# line by line).
set -euo pipefail

prog=bridge.sh
uplink=${UPLINK:-eth0}
tap=${TAP:-tap0}
bridge=${BRIDGE:-br0}
down=false

usage() {
	cat <<EOF
usage: $prog [-u UPLINK] [-t TAP] [-b BRIDGE] [--down]
  -u UPLINK   host interface connected to the LAN (default: $uplink)
  -t TAP      TAP device for the RFSIS stack (default: $tap)
  -b BRIDGE   bridge joining the two (default: $bridge)
  --down      undo: move addresses back to UPLINK, delete BRIDGE and TAP
EOF
}

say() { echo "$prog: $*"; }
die() {
	echo "$prog: error: $*" >&2
	exit 1
}

while (($# > 0)); do
	case $1 in
	-u | --uplink) [[ $# -ge 2 ]] || die "$1 needs an interface name"; uplink=$2; shift 2 ;;
	-t | --tap) [[ $# -ge 2 ]] || die "$1 needs an interface name"; tap=$2; shift 2 ;;
	-b | --bridge) [[ $# -ge 2 ]] || die "$1 needs an interface name"; bridge=$2; shift 2 ;;
	--down) down=true; shift ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; die "unknown argument: $1" ;;
	esac
done

# Interface names follow the kernel's rules (and RFSIS's tap_device_name).
valid_name() {
	[[ ${#1} -ge 1 && ${#1} -le 15 && $1 != . && $1 != .. && $1 =~ ^[[:graph:]]+$ && $1 != */* && $1 != *:* ]]
}
for pair in "UPLINK:$uplink" "TAP:$tap" "BRIDGE:$bridge"; do
	valid_name "${pair#*:}" || die "invalid ${pair%%:*} name '${pair#*:}' (1-15 printable characters, no '/' or ':')"
done
[[ $uplink != "$tap" && $uplink != "$bridge" && $tap != "$bridge" ]] ||
	die "UPLINK, TAP and BRIDGE must be three different interfaces ($uplink, $tap, $bridge)"
[[ $uplink != lo ]] || die "the loopback interface cannot be the uplink"

[[ $EUID -eq 0 ]] || die "must run as root (try: sudo $0 ...)"
command -v ip >/dev/null || die "the 'ip' command (iproute2) is required"

exists() { ip link show dev "$1" >/dev/null 2>&1; }
# (No "| grep -q" under pipefail: grep quitting early can fail the pipe.)
is_bridge() {
	local d
	d=$(ip -d -o link show dev "$1") && [[ $d == *'    bridge '* ]]
}
is_tap() {
	local d
	d=$(ip -d -o link show dev "$1") && [[ $d == *' tun type tap '* ]]
}
master_of() { ip -o link show dev "$1" | sed -n 's/.* master \([^ ]*\) .*/\1/p'; }
mac_of() { ip -o link show dev "$1" | sed -n 's/.* link\/ether \([0-9a-f:]*\) .*/\1/p'; }

# ipv4_addrs DEV: one "ADDR/LEN [brd B] [noprefixroute]" per line, primary
# addresses first (as ip lists them), ready for "ip addr add".
ipv4_addrs() {
	ip -4 -o addr show dev "$1" | awk '{
		a = ""; b = ""; f = ""
		for (i = 1; i <= NF; i++) {
			if ($i == "inet") a = $(i + 1)
			else if ($i == "brd") b = " brd " $(i + 1)
			else if ($i == "noprefixroute") f = " noprefixroute"
		}
		if (a != "") print a b f
	}'
}

# ipv4_routes DEV: the main table's routes through DEV, minus the ones the
# kernel derives from addresses (they come back with the addresses), with
# status flags that "ip route add" does not take removed.
ipv4_routes() {
	ip -4 route show table main dev "$1" | awk '
		/ proto kernel / { next }
		{
			out = ""
			for (i = 1; i <= NF; i++)
				if ($i != "linkdown" && $i != "dead" && $i != "offload" && $i != "trap" && $i != "rt_offload" && $i != "rt_trap")
					out = out (out == "" ? "" : " ") $i
			if (out != "") print out
		}'
}

# move_ipv4 FROM TO: move addresses and routes. Routes are read first
# because removing the last address from FROM makes the kernel drop them.
move_ipv4() {
	local from=$1 to=$2 a r moved=false
	local -a addrs routes
	mapfile -t addrs < <(ipv4_addrs "$from")
	mapfile -t routes < <(ipv4_routes "$from")
	local have
	for a in "${addrs[@]}"; do
		have=$(ip -4 -o addr show dev "$to")
		if [[ $have != *" inet ${a%% *} "* ]]; then
			# shellcheck disable=SC2086 # a holds several words on purpose
			ip addr add $a dev "$to"
		fi
		say "moved address ${a%% *} from $from to $to"
		moved=true
	done
	if [[ $moved == true ]]; then
		ip -4 addr flush dev "$from"
	fi
	for r in "${routes[@]}"; do
		# shellcheck disable=SC2086 # r holds several words on purpose
		ip route replace $r dev "$to"
		say "moved route '$r' from $from to $to"
	done
	if [[ -n $(ip -6 -o addr show dev "$from" scope global) ]]; then
		say "note: $from has global IPv6 addresses; only IPv4 is moved, move them to $to by hand if needed"
	fi
}

up() {
	# Check everything before changing anything, so a refusal leaves the
	# host as it was.
	exists "$uplink" || die "uplink $uplink does not exist (choose it with -u; see 'ip link')"
	local m
	m=$(master_of "$uplink")
	[[ -z $m || $m == "$bridge" ]] || die "$uplink is already a port of $m; use -b $m or remove it from $m first"
	if exists "$tap"; then
		is_tap "$tap" || die "$tap exists and is not a TAP device"
		m=$(master_of "$tap")
		[[ -z $m || $m == "$bridge" ]] || die "$tap is already a port of $m"
	fi
	if exists "$bridge"; then
		is_bridge "$bridge" || die "$bridge exists and is not a bridge"
	fi

	if ! exists "$tap"; then
		ip tuntap add dev "$tap" mode tap
		say "created persistent TAP device $tap"
	fi
	if ! exists "$bridge"; then
		ip link add name "$bridge" type bridge
		say "created bridge $bridge"
	fi

	local mac
	mac=$(mac_of "$uplink")
	if [[ -n $mac && $(mac_of "$bridge") != "$mac" ]]; then
		ip link set dev "$bridge" address "$mac"
		say "gave $bridge the MAC address of $uplink ($mac)"
	fi
	ip link set dev "$bridge" up

	local dev
	for dev in "$uplink" "$tap"; do
		if [[ $(master_of "$dev") != "$bridge" ]]; then
			ip link set dev "$dev" master "$bridge"
			say "added $dev to $bridge"
		fi
		ip link set dev "$dev" up
	done

	# The host's own IPv6 on the TAP would only send router solicitations
	# and MLD reports to the stack reading the TAP; turn it off.
	local v6=/proc/sys/net/ipv6/conf/$tap/disable_ipv6
	if [[ -w $v6 && $(<"$v6") != 1 ]]; then
		echo 1 >"$v6"
		say "disabled the host's IPv6 on $tap"
	fi

	move_ipv4 "$uplink" "$bridge"
	say "ready: $bridge has ports $uplink and $tap; host IPv4 on $bridge: $(ipv4_addrs "$bridge" | awk '{print $1}' | paste -sd ' ' -)"
}

down() {
	if exists "$bridge"; then
		is_bridge "$bridge" || die "$bridge exists and is not a bridge; not touching it"
	fi
	if exists "$tap"; then
		is_tap "$tap" || die "$tap exists and is not a TAP device; not touching it"
	fi

	# The TAP goes first: if a running stack still holds it, nothing else
	# has changed yet when we stop.
	if exists "$tap"; then
		ip tuntap del dev "$tap" mode tap ||
			die "could not delete $tap; is a program (echoserver?) still using it?"
		say "deleted TAP device $tap"
	fi
	if exists "$bridge"; then
		if exists "$uplink"; then
			if [[ $(master_of "$uplink") == "$bridge" ]]; then
				ip link set dev "$uplink" nomaster
				say "removed $uplink from $bridge"
			fi
			ip link set dev "$uplink" up
			move_ipv4 "$bridge" "$uplink"
		else
			say "warning: uplink $uplink does not exist; the addresses on $bridge are dropped with it"
		fi
		ip link del dev "$bridge"
		say "deleted bridge $bridge"
	fi
	if exists "$uplink"; then
		say "down: $bridge and $tap are gone; host IPv4 on $uplink: $(ipv4_addrs "$uplink" | awk '{print $1}' | paste -sd ' ' -)"
	else
		say "down: $bridge and $tap are gone"
	fi
}

if [[ $down == true ]]; then
	down
else
	up
fi
