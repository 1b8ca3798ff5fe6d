#!/usr/bin/env bash
# P2PModel netlab: the real binaries behind real Linux NAT (network namespaces + nftables).
# Run as root: `sudo tests/netlab/run.sh`. See docs/NETLAB.md.
#
# Builds the lab (every namespace is named p2pm-*, every veth lives only inside them; the
# root namespace's links, routes and firewall are never touched), verifies each NAT preset
# with coturn's turnutils_natdiscovery, runs `p2pmodel netcheck` against `p2pmodel shard
# relay` behind each preset (and the Vovida RFC 3489 `stun` client), prints one line per check and ends with
# `netlab: N passed, M failed` (exit 0 only when M is 0). Removes everything on exit.
#
# Env: P2PMODEL_BIN (skip the build), CARGO_TARGET_DIR, NETLAB_KEEP=1 (keep the lab and
# its logs for debugging; run `tests/netlab/run.sh --clean` afterwards).
set -uo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
P=p2pm-nl-                                # prefix of every namespace we create

# "Public internet": 198.18.0.0/15 (RFC 2544 benchmarking range), only inside the lab.
SRV1=198.18.0.10 SRV2=198.18.0.11         # server namespace: two public IPs (RFC 5780)
PUB=198.18.200.2 PUB2=198.18.200.3        # public host, no NAT (two IPs: it runs a STUN server too)
RELAY_PORT=3478 RELAY_ALT=3479            # p2pmodel shard relay (STUN on both + alternate_ip)
# A second relay of the shard, 40 ms each way further from everyone (its own delay line):
# relay 0 in `[shard] relays`, the server's relay is relay 1. Pairs must pick the lower RTT
# sum (relay 1) although relay 0 is listed first (issue #15).
FAR_RELAY=198.18.240.2 FAR_DELAY_MS=40
TURN_PORT=3488 TURN_ALT=3489              # coturn turnserver (RFC 5780 on both IPs)
LAN=10.0.0                                # EVERY site uses 10.0.0.0/24 (overlapping ranges)
DEFAULT_UDP_TIMEOUT=30 DEFAULT_UDP_STREAM_TIMEOUT=120
SHORT_TIMEOUT=3                           # binding timeout of the "tmo" site

# Sites: name  preset  clients  udp-binding-timeout-seconds (0 = kernel defaults)
SITES=(
  "fc   full-cone        1 0"
  "rc   restricted       1 0"
  "prc  port-restricted  2 0"
  "sym  symmetric        1 0"
  "fw   udp-firewall     1 0"
  "tmo  symmetric        1 $SHORT_TIMEOUT"
  "fc2  full-cone        1 0"
  "sym2 symmetric        1 0"
  "t05a port-restricted  1 12"
  "t05b port-restricted  1 12"
  "t05c port-restricted  1 12"
  "t05d port-restricted  1 12"
  "mob  port-restricted  1 0"
  "rb   port-restricted  1 0"
  "blk  port-restricted  1 0"
  "far  port-restricted  1 0 40/1"
  "sfa  symmetric        1 0 40/0"
  "sfb  symmetric        1 0 40/0"
)

log() { echo "netlab: $*"; }

# ---------------------------------------------------------------- cleanup (idempotent)
cleanup_lab() {
  local ns pid
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$P"); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null; done
  done
  sleep 0.2
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$P"); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
    ip netns delete "$ns" 2>/dev/null
  done
}

if [ "$(id -u)" != 0 ]; then echo "netlab: must run as root (sudo $0)" >&2; exit 2; fi
# One lab per machine: namespaces share the p2pm-nl- prefix, and a run starts by removing a
# crashed run's leftovers, so a second run waits here instead of tearing the first one down.
# --clean does not wait: a kept lab's processes (NETLAB_KEEP=1) inherited the lock, and
# cleaning kills them.
if [ "${1:-}" = "--clean" ]; then cleanup_lab; exit 0; fi
exec 9>/run/lock/p2pm-netlab.lock
if ! flock -n 9; then echo "netlab: another run holds the lab; waiting"; flock 9; fi
for tool in ip nft conntrack turnserver turnutils_natdiscovery python3 ethtool; do
  command -v "$tool" >/dev/null || {
    echo "netlab: missing $tool (apt-get install -y nftables iproute2 conntrack coturn python3 ethtool)" >&2
    echo "netlab: 0 passed, 1 failed"; exit 1; }
done

WORK="$(mktemp -d /tmp/p2pm-nl-netlab.XXXXXX)"
on_exit() {
  local j
  for j in $(jobs -p); do kill "$j" 2>/dev/null; done   # our own background check jobs
  if [ "${NETLAB_KEEP:-0}" = 1 ]; then log "kept lab and logs in $WORK"; return; fi
  cleanup_lab
  rm -rf "$WORK"
}
trap on_exit EXIT
trap 'exit 130' INT TERM
cleanup_lab   # leftovers of a crashed run

START=$(date +%s)

# ---------------------------------------------------------------- the binary
find_bin() {
  if [ -n "${P2PMODEL_BIN:-}" ]; then echo "$P2PMODEL_BIN"; return; fi
  (cd "$ROOT" && cargo build -q -p p2pmodel-servers >&2) || return 1
  local dir
  dir="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
  echo "${dir:-$ROOT/target}/debug/p2pmodel"
}
BIN="$(find_bin)"
if [ ! -x "$BIN" ]; then echo "netlab: p2pmodel binary not found ($BIN)"; echo "netlab: 0 passed, 1 failed"; exit 1; fi

# ---------------------------------------------------------------- results
RES="$WORK/results"; : >"$RES"
# result ok|fail NAME DETAILS — one line per check (written to a file so sites can run in parallel)
result() { printf '%-4s %-34s %s\n' "$( [ "$1" = ok ] && echo PASS || echo FAIL)" "$2" "$3" >>"$RES"; }

# ---------------------------------------------------------------- topology helpers
nsx() { local ns="$1"; shift; ip netns exec "$P$ns" "$@"; }
mkns() {
  ip netns add "$P$1"
  ip -n "$P$1" link set lo up
}
# veth pair created directly inside the two namespaces (never in the root namespace)
veth() { # ns1 if1 ns2 if2
  ip -n "$P$1" link add "$2" type veth peer name "$4" netns "$P$3"
  ip -n "$P$1" link set "$2" up
  ip -n "$P$3" link set "$4" up
}
forwarding() { nsx "$1" sysctl -qw net.ipv4.ip_forward=1; }

build_core() {
  mkns inet; forwarding inet
  # server: two public IPs on one link
  mkns srv; veth inet srv srv eth0
  ip -n "${P}inet" addr add 198.18.0.1/24 dev srv
  ip -n "${P}srv" addr add "$SRV1/24" dev eth0
  ip -n "${P}srv" addr add "$SRV2/24" dev eth0
  ip -n "${P}srv" route add default via 198.18.0.1
  # public host, no NAT, no firewall
  mkns pub; veth inet pub pub eth0
  ip -n "${P}inet" addr add 198.18.200.1/24 dev pub
  ip -n "${P}pub" addr add "$PUB/24" dev eth0
  ip -n "${P}pub" addr add "$PUB2/24" dev eth0
  ip -n "${P}pub" route add default via 198.18.200.1
  # the far relay's host, behind its own delay line
  mkns rfar; mkns rfar-dly
  veth inet rfar rfar-dly up0
  veth rfar-dly dn0 rfar eth0
  ip -n "${P}rfar-dly" link set up0 promisc on
  ip -n "${P}rfar-dly" link set dn0 promisc on
  nsx inet ethtool -K rfar tx off >/dev/null 2>&1
  nsx rfar ethtool -K eth0 tx off >/dev/null 2>&1
  nsx rfar-dly python3 "$HERE/delayline.py" up0 dn0 "$FAR_DELAY_MS" 0 240 >"$WORK/rfar-dly.log" 2>&1 &
  ip -n "${P}inet" addr add 198.18.240.1/24 dev rfar
  ip -n "${P}rfar" addr add "$FAR_RELAY/24" dev eth0
  ip -n "${P}rfar" route add default via 198.18.240.1
}

# nftables ruleset of a NAT router for one preset. WAN is "wan", LAN is "lan".
# $2: mapping timeout (seconds) for the dynamic maps/sets of full-cone and restricted.
preset_rules() {
  local preset="$1" mt="$2"
  cat <<EOF
table ip p2pm {
EOF
  case "$preset" in
  full-cone|restricted)
    # EIM: plain masquerade (port-preserving, one mapping per internal IP:port).
    # EIF/ADF: every outgoing packet records  public port -> internal IP . port  in @map
    # (and for restricted, public port . remote IP in @contacted); a NEW inbound UDP
    # flow to a recorded public port is DNATed to the internal endpoint.
    cat <<EOF
  map mapping { type inet_service : ipv4_addr . inet_service; flags dynamic,timeout; timeout ${mt}s; }
  set contacted { type inet_service . ipv4_addr; flags dynamic,timeout; timeout ${mt}s; }
  chain learn {
    type filter hook postrouting priority srcnat + 10; policy accept;
    oifname "wan" meta l4proto udp ct direction original update @mapping { udp sport : ct original ip saddr . ct original proto-src }
    oifname "wan" meta l4proto udp update @contacted { udp sport . ip daddr }
  }
EOF
    if [ "$preset" = full-cone ]; then
      echo '  chain pre { type nat hook prerouting priority dstnat; policy accept;'
      echo '    iifname "wan" meta l4proto udp dnat ip to udp dport map @mapping; }'
    else
      echo '  chain pre { type nat hook prerouting priority dstnat; policy accept;'
      echo '    iifname "wan" meta l4proto udp udp dport . ip saddr @contacted dnat ip to udp dport map @mapping; }'
    fi
    echo '  chain post { type nat hook postrouting priority srcnat; policy accept; oifname "wan" masquerade; }'
    ;;
  port-restricted)   # EIM + APDF: Linux masquerade as is
    echo '  chain post { type nat hook postrouting priority srcnat; policy accept; oifname "wan" masquerade; }' ;;
  symmetric)         # APDM with random ports
    echo '  chain post { type nat hook postrouting priority srcnat; policy accept; oifname "wan" masquerade random; }' ;;
  udp-firewall)      # port-restricted NAT that drops every UDP flow not to the server IPs
    echo '  chain post { type nat hook postrouting priority srcnat; policy accept; oifname "wan" masquerade; }'
    echo "  chain fw_forward { type filter hook forward priority filter; policy accept;"
    echo "    oifname \"wan\" meta l4proto udp ip daddr != { $SRV1, $SRV2 } counter drop; }" ;;
  esac
  cat <<EOF
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "wan" ct state established,related accept
    iifname "wan" counter drop
  }
}
EOF
}

SITE_NUM=0
build_site() { # name preset clients timeout [delay-ms/loss-%]
  local name="$1" preset="$2" n="$3" tmo="$4" line="${5:--}" k i
  SITE_NUM=$((SITE_NUM + 1)); k=$SITE_NUM
  mkns "$name-nat"; forwarding "$name-nat"
  if [ "$line" = - ]; then
    veth inet "$name" "$name-nat" wan
  else
    # a delay/loss line between the internet and the site's router (no netem here)
    mkns "$name-dly"
    veth inet "$name" "$name-dly" up0
    veth "$name-dly" dn0 "$name-nat" wan
    ip -n "$P$name-dly" link set up0 promisc on
    ip -n "$P$name-dly" link set dn0 promisc on
    # frames re-sent from a packet socket must carry complete checksums
    nsx inet ethtool -K "$name" tx off >/dev/null 2>&1
    nsx "$name-nat" ethtool -K wan tx off >/dev/null 2>&1
    nsx "$name-dly" python3 "$HERE/delayline.py" up0 dn0 "${line%/*}" "${line#*/}" "$k" >"$WORK/$name-dly.log" 2>&1 &
  fi
  ip -n "${P}inet" addr add "198.18.$k.1/24" dev "$name"
  ip -n "$P$name-nat" addr add "198.18.$k.2/24" dev wan
  ip -n "$P$name-nat" route add default via "198.18.$k.1"
  ip -n "$P$name-nat" link add lan type bridge
  ip -n "$P$name-nat" link set lan up
  ip -n "$P$name-nat" addr add "$LAN.1/24" dev lan
  for i in $(seq 1 "$n"); do
    mkns "$name-c$i"
    veth "$name-nat" "lan$i" "$name-c$i" eth0
    ip -n "$P$name-nat" link set "lan$i" master lan
    ip -n "$P$name-c$i" addr add "$LAN.$((9 + i))/24" dev eth0
    ip -n "$P$name-c$i" route add default via "$LAN.1"
  done
  local mt=$DEFAULT_UDP_STREAM_TIMEOUT
  [ "$tmo" != 0 ] && mt=$tmo
  preset_rules "$preset" "$mt" >"$WORK/$name.nft"
  nsx "$name-nat" nft -f "$WORK/$name.nft" || { log "nft failed for $name"; return 1; }
  # conntrack is loaded now (ct rules / nat); the UDP binding timeout is per namespace
  if [ "$tmo" != 0 ]; then
    nsx "$name-nat" sysctl -qw net.netfilter.nf_conntrack_udp_timeout="$tmo"
    nsx "$name-nat" sysctl -qw net.netfilter.nf_conntrack_udp_timeout_stream="$tmo"
  fi
}

# ---------------------------------------------------------------- servers
start_servers() {
  local secret
  secret="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  cat >"$WORK/shard.toml" <<EOF
[shard]
name = "netlab"
secret = "$secret"
bind = "$SRV1"
public_addresses = ["$SRV1"]
metrics = ""
relays = ["$FAR_RELAY:$RELAY_PORT", "$SRV1:$RELAY_PORT"]

[relay]
id = 1
port = $RELAY_PORT
alternate_port = $RELAY_ALT
alternate_ip = "$SRV2"
socket_buffer_bytes = 262144
stats_log_interval_secs = 0
EOF
  nsx srv "$BIN" shard relay --config "$WORK/shard.toml" >"$WORK/relay.log" 2>&1 &
  # relay 0, far away: its own config (the same shard secret; a real one would hold only
  # its key, `p2pmodel relay-key --id 0`)
  cat >"$WORK/relay-far.toml" <<EOF
[shard]
name = "netlab"
secret = "$secret"
bind = "$FAR_RELAY"
public_addresses = ["$FAR_RELAY"]
metrics = ""
relays = ["$FAR_RELAY:$RELAY_PORT", "$SRV1:$RELAY_PORT"]

[relay]
id = 0
port = $RELAY_PORT
alternate_port = $RELAY_ALT
stats_log_interval_secs = 0
EOF
  nsx rfar "$BIN" shard relay --config "$WORK/relay-far.toml" >"$WORK/relay-far.log" 2>&1 &
  nsx srv turnserver -n --no-cli --no-tls --no-dtls -z --log-file "$WORK/turnserver.log" --simple-log \
    -L "$SRV1" -L "$SRV2" --listening-port "$TURN_PORT" --alt-listening-port "$TURN_ALT" \
    --pidfile "$WORK/turnserver.pid" --no-software-attribute >/dev/null 2>&1 &
  # our STUN server on the public host: a non-shard destination (the firewall must block it)
  nsx pub "$BIN" stun --bind "$PUB" --alt-ip "$PUB2" --port "$RELAY_PORT" --alt-port "$RELAY_ALT" --allow-small-requests >"$WORK/pubstun.log" 2>&1 &
  # wait until all three answer a Binding
  local t
  for t in $(seq 1 50); do
    if nsx pub python3 "$HERE/stunprobe.py" "$PUB" 0 "$SRV1" "$RELAY_PORT" 0.3 >/dev/null &&
       nsx pub python3 "$HERE/stunprobe.py" "$PUB" 0 "$SRV2" "$TURN_PORT" 0.3 >/dev/null &&
       nsx srv python3 "$HERE/stunprobe.py" "$SRV1" 0 "$PUB" "$RELAY_PORT" 0.3 >/dev/null &&
       nsx pub python3 "$HERE/stunprobe.py" "$PUB" 0 "$FAR_RELAY" "$RELAY_PORT" 0.5 >/dev/null; then
      return 0
    fi
    sleep 0.2
  done
  log "servers did not come up; relay log:"; tail -5 "$WORK/relay.log" >&2
  return 1
}

# ---------------------------------------------------------------- checks
# Expected verdicts per preset: natdiscovery mapping, filtering; netcheck class
expect_nd_map() { case "$1" in
  full-cone|restricted|port-restricted|udp-firewall) echo "Endpoint Independent Mapping" ;;
  symmetric) echo "Address and Port Dependent Mapping" ;;
  public) echo "No NAT" ;; esac; }
expect_nd_filter() { case "$1" in
  full-cone|public) echo "Endpoint Independent Filtering" ;;
  restricted) echo "Address Dependent Filtering" ;;
  port-restricted|symmetric|udp-firewall) echo "Address and Port Dependent Filtering" ;; esac; }
expect_class() { case "$1" in
  full-cone) echo full-cone ;; restricted) echo restricted ;;
  port-restricted|udp-firewall) echo port-restricted ;;   # the server IPs are allowed
  symmetric) echo symmetric ;; public) echo open ;; esac; }

# coturn's RFC 5780 classifier against turnserver on SRV1/SRV2
check_natdiscovery() { # label ns preset local-ip
  # -L: with the wildcard address natdiscovery cannot tell "No NAT" from EIM
  local label="$1" ns="$2" preset="$3" lip="$4" out map filt em ef
  out="$(nsx "$ns" timeout 60 turnutils_natdiscovery -m -f -L "$lip" -p "$TURN_PORT" "$SRV1" 2>&1)"
  echo "$out" >"$WORK/natdiscovery-$label.log"
  map="$(echo "$out" | grep -oE '(No NAT|NAT with [A-Za-z ]*Mapping|[A-Za-z ]*Dependent Mapping|Endpoint Independent Mapping)' | head -1 | sed 's/^NAT with //')"
  filt="$(echo "$out" | grep -oE '(Endpoint Independent|Address Dependent|Address and Port Dependent) Filtering' | head -1)"
  em="$(expect_nd_map "$preset")"; ef="$(expect_nd_filter "$preset")"
  if [ "$map" = "$em" ] && [ "$filt" = "$ef" ]; then
    result ok "natdiscovery $label ($preset)" "mapping=\"$map\" filtering=\"$filt\""
  else
    result fail "natdiscovery $label ($preset)" "mapping=\"$map\" filtering=\"$filt\" expected \"$em\" / \"$ef\" (log natdiscovery-$label.log)"
  fi
}

# The Vovida RFC 3489 client (Debian stun-client) against coturn (answers CHANGE-REQUEST)
expect_vovida() { case "$1" in
  full-cone) echo "Independent Mapping, Independent Filter" ;;
  restricted) echo "Independent Mapping, Address Dependent Filter" ;;
  port-restricted|udp-firewall) echo "Independent Mapping, Port Dependent Filter" ;;
  symmetric) echo "Dependent Mapping" ;; public) echo "Open" ;; esac; }
check_vovida() { # label ns preset
  local label="$1" ns="$2" preset="$3" out want
  command -v stun >/dev/null || { result fail "vovida-stun $label ($preset)" "stun (Debian stun-client) not installed"; return; }
  out="$(nsx "$ns" timeout 30 stun "$SRV1:$TURN_PORT" 2>&1 | grep '^Primary:' | sed 's/^Primary: //; s/[[:space:]]*$//')"
  want="$(expect_vovida "$preset")"
  case "$out" in
    "$want"*) result ok "vovida-stun $label ($preset)" "\"$out\"" ;;
    *) result fail "vovida-stun $label ($preset)" "\"$out\" expected \"$want...\"" ;;
  esac
}

# The same classic (RFC 3489, no magic cookie) client against our relay's STUN port: its bare
# 28-byte requests would be answered with more bytes than they carry, so the relay stays
# silent (anti-amplification; our clients pad their requests). Against `p2pmodel stun
# --allow-small-requests` (the public host's diagnostic server) it classifies the NAT.
info_vovida_relay() {
  local out want
  command -v stun >/dev/null || return
  out="$(nsx prc-c1 timeout 30 stun "$SRV1:$RELAY_PORT" 2>&1 | grep '^Primary:' | sed 's/^Primary: //; s/[[:space:]]*$//')"
  case "$out" in
    "Blocked or could not reach"*) result ok "vovida-stun prc-c1 -> relay silent" "\"$out\" (no answer larger than a request)" ;;
    *) result fail "vovida-stun prc-c1 -> relay silent" "\"$out\": the relay answered unpadded requests" ;;
  esac
  out="$(nsx prc-c1 timeout 30 stun "$PUB:$RELAY_PORT" 2>&1 | grep '^Primary:' | sed 's/^Primary: //; s/[[:space:]]*$//')"
  want="$(expect_vovida port-restricted)"
  case "$out" in
    "$want"*) result ok "vovida-stun prc-c1 -> p2pmodel stun" "\"$out\"" ;;
    *) result fail "vovida-stun prc-c1 -> p2pmodel stun" "\"$out\" expected \"$want...\"" ;;
  esac
}

json_field() { python3 -c 'import json,sys; v=json.loads(sys.argv[1]).get(sys.argv[2]); print("null" if v is None else v)' "$1" "$2" 2>/dev/null; }

# our netcheck against our relay (alternate_ip = SRV2)
check_netcheck() { # label ns preset [stun-target] [expected-class]
  local label="$1" ns="$2" preset="$3" target="${4:-$SRV1:$RELAY_PORT}" want="${5:-}" out class t0 t1 figs
  [ -n "$want" ] || want="$(expect_class "$preset")"
  t0=$(date +%s%N)
  out="$(nsx "$ns" "$BIN" netcheck --stun "$target" --json --timeout 20 2>"$WORK/netcheck-$label.err")"
  t1=$(date +%s%N)
  echo "$out" >"$WORK/netcheck-$label.json"
  class="$(json_field "$out" class)"
  figs="class=$class mapping=$(json_field "$out" mapping) filtering=$(json_field "$out" filtering) allocation=$(json_field "$out" allocation) public=$(json_field "$out" public) local=$(json_field "$out" local) in $(( (t1 - t0) / 1000000 ))ms"
  if [ "$class" = "$want" ]; then result ok "netcheck $label ($preset)" "$figs"
  else result fail "netcheck $label ($preset)" "$figs expected class=$want"; fi
}

# The firewall must drop UDP to anything but the servers (netcheck to the public host's
# STUN server: blocked), while the same probe passes from an unfirewalled site.
check_fw_blocks() {
  check_netcheck "fw-c1->pub" fw-c1 udp-firewall "$PUB:$RELAY_PORT" blocked
  check_netcheck "prc-c1->pub" prc-c1 port-restricted "$PUB:$RELAY_PORT" port-restricted
}

# UDP binding timeout: on the symmetric "tmo" site (random ports) a binding that lives on
# keeps its public port; one idle longer than the timeout comes back on a new random port.
check_binding_timeout() {
  local a b c ct
  a="$(nsx tmo-c1 python3 "$HERE/stunprobe.py" "$LAN.10" 40000 "$SRV1" "$RELAY_PORT")"
  sleep 1
  b="$(nsx tmo-c1 python3 "$HERE/stunprobe.py" "$LAN.10" 40000 "$SRV1" "$RELAY_PORT")"
  ct="$(nsx tmo-nat conntrack -L -p udp --dport "$RELAY_PORT" 2>/dev/null | awk '{print $3}' | head -1)"
  sleep $((SHORT_TIMEOUT + 2))
  c="$(nsx tmo-c1 python3 "$HERE/stunprobe.py" "$LAN.10" 40000 "$SRV1" "$RELAY_PORT")"
  if [ "$a" = "$b" ] && [ "$b" != "$c" ] && [ "${c#*:}" != timeout ] && [ "$a" != timeout ]; then
    result ok "binding timeout tmo (${SHORT_TIMEOUT}s)" "after 1s idle: $a -> $b (kept); after $((SHORT_TIMEOUT + 2))s idle: -> $c (new mapping); conntrack ttl ${ct:-?}s"
  else
    result fail "binding timeout tmo (${SHORT_TIMEOUT}s)" "after 1s: $a -> $b; after $((SHORT_TIMEOUT + 2))s: -> $c; conntrack ttl ${ct:-?}s"
  fi
}

# Every site uses 10.0.0.0/24: the two clients of the prc site share one NAT, and clients
# on different sites with the same private address get different public addresses.
check_overlap() {
  local a b c
  a="$(nsx prc-c1 python3 "$HERE/stunprobe.py" "$LAN.10" 41000 "$SRV1" "$RELAY_PORT")"
  b="$(nsx prc-c2 python3 "$HERE/stunprobe.py" "$LAN.11" 41000 "$SRV1" "$RELAY_PORT")"
  c="$(nsx fc-c1 python3 "$HERE/stunprobe.py" "$LAN.10" 41000 "$SRV1" "$RELAY_PORT")"
  if [ "${a%:*}" = "${b%:*}" ] && [ "$a" != "$b" ] && [ "${a%:*}" != "${c%:*}" ] &&
     [ "${a#*:}" = 41000 ] && [ "$a" != timeout ] && [ "$b" != timeout ] && [ "$c" != timeout ]; then
    result ok "same private range / one NAT" "prc-c1 $LAN.10:41000->$a, prc-c2 $LAN.11:41000->$b, fc-c1 $LAN.10:41000->$c"
  else
    result fail "same private range / one NAT" "prc-c1->$a prc-c2->$b fc-c1->$c"
  fi
}

# ---------------------------------------------------------------- peer scenarios
# TC-01…TC-07 and the extra cases with the real shard (Agent + relay on the public server,
# Lobby + Game on an internal network only the server reaches) and real bots
# (`p2pmodel-demo --headless --bot --json`). Each scenario has its own zone, so scenarios run
# in parallel without meeting; botcheck.py judges each from the two bots' JSON lines.
INT_SRV=10.99.0.1 INT_LOBBY=10.99.0.2     # internal network (DMZ -> IN), not routed from inet
AGENT_PORT=7000 LOGIN_PORT=7001 LOBBY_PORT=7110 LOGIN_KEY=
BOT_SECS=${NETLAB_BOT_SECS:-20}

find_demo() {
  if [ -n "${P2PMODEL_DEMO_BIN:-}" ]; then echo "$P2PMODEL_DEMO_BIN"; return; fi
  (cd "$ROOT" && cargo build -q -p p2pmodel-demo >&2) || return 1
  echo "$(dirname "$BIN")/p2pmodel-demo"
}

build_internal() {
  mkns int
  veth srv int0 int eth0
  ip -n "${P}srv" addr add "$INT_SRV/24" dev int0
  ip -n "${P}int" addr add "$INT_LOBBY/24" dev eth0
  ip -n "${P}int" route add default via "$INT_SRV"
}

start_shard() {
  {
    echo
    echo "[agent]"
    echo "port = $AGENT_PORT"
    echo "login_port = $LOGIN_PORT"
    # A lost connection (TC-06's address change, a killed shard) is noticed in 10 s; the
    # Game server holds the player's pairs for 30 s, so its resume keeps its links.
    echo "client_timeout_secs = 10"
    # Up to 26 bots start at once, several behind one NAT address: room above the defaults.
    echo "max_clients_per_ip = 64"
    echo "login_per_source_burst = 30"
    echo
    echo "[lobby]"
    echo "internal = \"$INT_LOBBY:$LOBBY_PORT\""
    # On disk, so a killed and restarted Lobby keeps every player's id (resume, issue #13).
    echo "store = \"$WORK/characters.json\""
    echo "zones = 19"
    echo "heartbeat_ms = 250"
    echo "heartbeat_timeout_ms = 1500"
    echo
    echo "[game]"
    echo "servers_per_zone = 1"
  } >>"$WORK/shard.toml"
  run_roles
  # The login key bots pin (derived from the shard secret): KEY@HOST:PORT.
  LOGIN_KEY="$("$BIN" secret --show-public --config "$WORK/shard.toml")" || {
    log "cannot read the shard's login key"; return 1; }
  local t
  for t in $(seq 1 50); do
    if nsx srv ss -lun 2>/dev/null | grep -q ":$LOGIN_PORT "; then
      sleep 1; return 0
    fi
    sleep 0.2
  done
  log "shard did not come up"; tail -n 3 "$WORK/agent.log" "$WORK/lobby.log" "$WORK/game.log" >&2
  return 1
}

# The shard's roles (the relay runs on its own, see start_servers); logs are appended, so a
# restart keeps the history.
run_roles() {
  nsx int "$BIN" shard lobby --config "$WORK/shard.toml" >>"$WORK/lobby.log" 2>&1 &
  sleep 0.5
  nsx int "$BIN" shard game --config "$WORK/shard.toml" >>"$WORK/game.log" 2>&1 &
  nsx srv "$BIN" shard agent --config "$WORK/shard.toml" >>"$WORK/agent.log" 2>&1 &
}

# bot NS NAME ZONE SECS [extra args...] — one headless bot in namespace NS; prints its pid.
bot() {
  local ns="$1" name="$2" zone="$3" secs="$4"; shift 4
  nsx "$ns" "$DEMO" --headless --bot --json --server "$LOGIN_KEY@$SRV1:$LOGIN_PORT" --name "$name" \
    --zone "$zone" --exit-after "$secs" "$@" >"$WORK/bot-$name.jsonl" 2>"$WORK/bot-$name.log" &
  echo $!
}

# judge LABEL A B botcheck-args... — one result line from botcheck.py
judge() {
  local label="$1" a="$2" b="$3" out; shift 3
  out="$(python3 "$HERE/botcheck.py" "$WORK/bot-$a.jsonl" "$WORK/bot-$b.jsonl" "$@")"
  case "$out" in
    ok*) result ok "$label" "${out#ok }" ;;
    *) result fail "$label" "${out#fail } (logs bot-$a.log, bot-$b.log)" ;;
  esac
}

# pair LABEL ZONE NS_A NS_B SECS "botcheck args" ["bot args A"] ["bot args B"] [AT ACTION ARGS...]
pair() {
  local label="$1" zone="$2" na="$3" nb="$4" secs="$5" checks="$6" xa="${7:-}" xb="${8:-}"
  local a="z$zone-a" b="z$zone-b" pa pb
  # shellcheck disable=SC2086
  pa=$(bot "$na" "$a" "$zone" "$secs" $xa)
  # shellcheck disable=SC2086
  pb=$(bot "$nb" "$b" "$zone" "$secs" $xb)
  if [ $# -ge 10 ]; then
    sleep "$9"; shift 9; "$@"
  fi
  while kill -0 "$pa" 2>/dev/null || kill -0 "$pb" 2>/dev/null; do sleep 0.5; done
  # shellcheck disable=SC2086
  judge "$label" "$a" "$b" $checks
}

# Mid-run actions.
# NAT reboot: the router forgets every mapping.
act_flush() { nsx "$1-nat" conntrack -F >/dev/null 2>&1; }
# Mobile <-> Wi-Fi: the site's public address changes (new mappings use the new address).
act_readdress() {
  local name="$1" k
  k="$(ip -n "$P$name-nat" -4 -o addr show dev wan | awk '{print $4}' | cut -d. -f3)"
  ip -n "$P$name-nat" addr del "198.18.$k.2/24" dev wan
  ip -n "$P$name-nat" addr add "198.18.$k.3/24" dev wan
  ip -n "$P$name-nat" route replace default via "198.18.$k.1"
  nsx "$name-nat" conntrack -F >/dev/null 2>&1
}
# The direct path dies: the site drops UDP to and from everything but the shard's servers.
act_block() {
  nsx "$1-nat" nft add table ip p2pm_block
  nsx "$1-nat" nft add chain ip p2pm_block blockfwd '{ type filter hook forward priority -10; policy accept; }'
  nsx "$1-nat" nft add rule ip p2pm_block blockfwd meta l4proto udp ip daddr != "{ $SRV1, $SRV2 }" ip saddr != "{ $SRV1, $SRV2 }" drop
}

# The whole shard (Agent, Lobby, Game) is killed -9 and comes back after $1 seconds.
act_outage() {
  local r
  for r in agent lobby game; do pkill -9 -f "$BIN shard $r --config $WORK/shard.toml"; done
  sleep "$1"
  run_roles
}
# One role ($1: agent or lobby) is killed -9 and comes back after $2 seconds.
act_kill_role() {
  pkill -9 -f "$BIN shard $1 --config $WORK/shard.toml"
  sleep "$2"
  case "$1" in
    agent) nsx srv "$BIN" shard agent --config "$WORK/shard.toml" >>"$WORK/agent.log" 2>&1 & ;;
    lobby) nsx int "$BIN" shard lobby --config "$WORK/shard.toml" >>"$WORK/lobby.log" 2>&1 & ;;
  esac
}
# The site's network drops entirely (shard connection and paths) for $2 seconds.
act_blackout() {
  nsx "$1-nat" nft add table ip p2pm_black
  nsx "$1-nat" nft add chain ip p2pm_black blackout '{ type filter hook forward priority -20; policy drop; }'
  sleep "$2"
  nsx "$1-nat" nft delete table ip p2pm_black
}

# Sessions outliving the shard (issue #13). After the parallel scenarios: it stops the shard.
# Bots keep talking over their links (no gap, no peer silent > 5 s), report `reconnecting`,
# and resume (`in_game` again) once the shard is back; then a client's whole network drops.
run_outages() {
  local jobs=()
  pair "shard killed -9, back after 8 s: direct" 14 fc-c1 prc-c2 50 "--expect direct --reconnected" \
    "" "" 8 act_outage 8 & jobs+=($!)
  pair "shard killed -9, back after 8 s: relayed" 15 sym-c1 sym2-c1 50 "--expect relayed --reconnected" & jobs+=($!)
  wait "${jobs[@]}"
  # The Agent alone: clients lose their connection and resume on the Game server that kept
  # their pairs; the Lobby and the Game go on.
  pair "Agent killed -9, back after 4 s" 17 fc-c1 prc-c2 40 "--expect direct --reconnected --no-lost --same-link" \
    "" "" 8 act_kill_role agent 4
  # The Lobby alone: nobody notices (the Agent re-announces its clients to the new Lobby).
  pair "Lobby killed -9, back after 4 s" 0 fc-c1 prc-c2 30 "--expect direct --no-lost --same-link" \
    "" "" 8 act_kill_role lobby 4
  pair "client network down 5 s" 16 rb-c1 fc2-c1 35 "--expect direct-or-relayed" \
    "--max-silence 15" "--max-silence 15" 8 act_blackout rb 5
}

run_scenarios() {
  local s=$BOT_SECS jobs=()
  if [ -z "${DEMO:-}" ] || [ ! -x "$DEMO" ]; then
    result fail "peer scenarios" "p2pmodel-demo binary not found (${DEMO:-unset})"; return
  fi
  pair "TC-01 full-cone <-> full-cone" 1 fc-c1 fc2-c1 "$s" "--expect direct --max-direct-ms 3000" & jobs+=($!)
  pair "TC-02 restricted <-> port-restr." 2 rc-c1 prc-c1 "$s" "--expect direct --max-direct-ms 3000" & jobs+=($!)
  # Two relays (issue #15): the pair lands on relay 1, the one with the lower RTT sum.
  pair "TC-03 symmetric <-> symmetric" 3 sym-c1 sym2-c1 "$s" "--expect relayed --relay $SRV1:$RELAY_PORT" & jobs+=($!)
  pair "TC-04 full-cone <-> udp-firewall" 4 fc-c1 fw-c1 "$s" "--expect relayed" & jobs+=($!)
  # TC-05: NATs that forget idle UDP mappings after 12 s; the bots stop sending for 30 s.
  pair "TC-05 keepalive on: survives" 5 t05a-c1 t05b-c1 50 "--expect direct --no-lost" \
    "--pause-at 6 --pause-for 30" "--pause-at 6 --pause-for 30" & jobs+=($!)
  # Without keepalive the mappings die; A resumes first and detects the dead session, B
  # resumes 15 s later and the link re-establishes (nothing A queued is lost).
  pair "TC-05 keepalive off: ends, detected" 6 t05c-c1 t05d-c1 65 "--expect direct-or-relayed --expect-lost" \
    "--keepalive off --pause-at 6 --pause-for 30" "--keepalive off --pause-at 6 --pause-for 45" & jobs+=($!)
  pair "TC-06 address change mid-session" 7 mob-c1 prc-c2 "$s" "--expect direct --no-lost --same-link" "" "" 8 act_readdress mob & jobs+=($!)
  pair "TC-07 symmetric <-> public host" 8 sym-c1 pub "$s" "--expect direct" & jobs+=($!)
  pair "TC-07 symmetric <-> port-restr." 9 sym2-c1 prc-c1 "$s" "--expect direct-or-relayed" & jobs+=($!)
  pair "two hosts behind one NAT" 10 prc-c1 prc-c2 "$s" "--expect direct" & jobs+=($!)
  pair "NAT reboot mid-session" 11 rb-c1 fc2-c1 "$s" "--expect direct-or-relayed" "" "" 8 act_flush rb & jobs+=($!)
  pair "direct path blocked mid-session" 12 blk-c1 fc-c1 "$s" "--expect relayed" "" "" 8 act_block blk & jobs+=($!)
  pair "80 ms / 1 % loss each way path" 13 far-c1 prc-c2 "$s" "--expect direct" & jobs+=($!)
  # Two symmetric sites, each behind 40 ms each way: relayed, relay RTT ~160 ms. The first
  # message rides the first relayed datagram (zero-round-trip relay, issue #15): ~half that.
  pair "zero-RTT relay, 160 ms relay RTT" 18 sfa-c1 sfb-c1 "$s" "--expect relayed --relay $SRV1:$RELAY_PORT" & jobs+=($!)
  wait "${jobs[@]}"
}

# An unauthenticated client reaches nothing behind the Agent: the internal network is not
# routed from the internet.
check_dmz() {
  if nsx fc-c1 timeout 2 bash -c "echo > /dev/tcp/$INT_LOBBY/$LOBBY_PORT" 2>/dev/null; then
    result fail "DMZ: internal network unreachable" "a site reached the Lobby at $INT_LOBBY:$LOBBY_PORT"
  elif ! nsx srv timeout 2 bash -c "echo > /dev/tcp/$INT_LOBBY/$LOBBY_PORT" 2>/dev/null; then
    result fail "DMZ: internal network unreachable" "the Lobby is not listening (control from the server failed)"
  else
    result ok "DMZ: internal network unreachable" "Lobby $INT_LOBBY:$LOBBY_PORT unreachable from a site"
  fi
}
# The delay line gives what it was set to: 40 ms each way and 1 % loss each way make an RTT
# of ~80 ms more than the clean path and ~2 % round-trip loss (200 probes).
check_delayline() {
  local clean far p50c p50f lossf
  clean="$(nsx fc-c1 python3 "$HERE/rttprobe.py" "$SRV1" "$RELAY_PORT" 200 10)"
  far="$(nsx far-c1 python3 "$HERE/rttprobe.py" "$SRV1" "$RELAY_PORT" 200 10)"
  p50c="$(echo "$clean" | sed -n 's/.*rtt_p50_ms=\([0-9.]*\).*/\1/p')"
  p50f="$(echo "$far" | sed -n 's/.*rtt_p50_ms=\([0-9.]*\).*/\1/p')"
  lossf="$(echo "$far" | sed -n 's/.*loss_pct=\([0-9.]*\).*/\1/p')"
  if python3 -c "import sys; c,f,l=map(float,sys.argv[1:]); sys.exit(0 if 78<=f-c<=90 and l<=8 else 1)" "${p50c:-nan}" "${p50f:-nan}" "${lossf:-nan}" 2>/dev/null; then
    result ok "delay line far (set 40ms/1% each way)" "clean: $clean; far: $far"
  else
    result fail "delay line far (set 40ms/1% each way)" "clean: $clean; far: $far (want +78..90 ms, loss <= 8 %)"
  fi
}
# The two relays as the symmetric sites measure them (STUN round trips): the RTT sum of the
# sym <-> sym2 pair through each; TC-03 checks that the pair took the lower one.
check_two_relays() {
  local near far n1 n2 f1 f2
  near="$(nsx sym-c1 python3 "$HERE/rttprobe.py" "$SRV1" "$RELAY_PORT" 50 10)"
  far="$(nsx sym-c1 python3 "$HERE/rttprobe.py" "$FAR_RELAY" "$RELAY_PORT" 50 10)"
  n1="$(echo "$near" | sed -n 's/.*rtt_p50_ms=\([0-9.]*\).*/\1/p')"
  f1="$(echo "$far" | sed -n 's/.*rtt_p50_ms=\([0-9.]*\).*/\1/p')"
  near="$(nsx sym2-c1 python3 "$HERE/rttprobe.py" "$SRV1" "$RELAY_PORT" 50 10)"
  far="$(nsx sym2-c1 python3 "$HERE/rttprobe.py" "$FAR_RELAY" "$RELAY_PORT" 50 10)"
  n2="$(echo "$near" | sed -n 's/.*rtt_p50_ms=\([0-9.]*\).*/\1/p')"
  f2="$(echo "$far" | sed -n 's/.*rtt_p50_ms=\([0-9.]*\).*/\1/p')"
  if python3 -c "import sys; n1,f1,n2,f2=map(float,sys.argv[1:]); sys.exit(0 if (f1+f2)-(n1+n2) >= 150 else 1)" "${n1:-nan}" "${f1:-nan}" "${n2:-nan}" "${f2:-nan}" 2>/dev/null; then
    result ok "two relays: RTT sums (sym, sym2)" "relay 0 (far) ${f1}+${f2} ms; relay 1 (near) ${n1}+${n2} ms: the pair belongs on relay 1"
  else
    result fail "two relays: RTT sums (sym, sym2)" "relay 0 (far) ${f1:-?}+${f2:-?} ms; relay 1 (near) ${n1:-?}+${n2:-?} ms (want the far sum >= 150 ms more)"
  fi
}
SCENARIOS=(check_dmz check_delayline check_two_relays run_scenarios run_outages)

# ---------------------------------------------------------------- main
build_all() {
  build_core || return 1
  build_internal || return 1
  local s
  for s in "${SITES[@]}"; do build_site $s || return 1; done
}
DEMO="$(find_demo)"
if build_all && start_servers && start_shard; then
  log "lab up in $(( $(date +%s) - START ))s; running checks"
  pids=()
  # one background job per site; every check prints into $RES
  for s in "${SITES[@]}"; do
    read -r name preset n tmo <<<"$s"
    case "$name" in tmo|fc2|sym2|t05?|mob|rb|blk|far|sfa|sfb) continue ;; esac   # same presets, verified once
    ( check_natdiscovery "$name-c1" "$name-c1" "$preset" "$LAN.10"; check_vovida "$name-c1" "$name-c1" "$preset"; check_netcheck "$name-c1" "$name-c1" "$preset"
      [ "$n" -ge 2 ] && check_netcheck "$name-c2" "$name-c2" "$preset"; true ) &
    pids+=($!)
  done
  ( check_natdiscovery pub pub public "$PUB"; check_vovida pub pub public; check_netcheck pub pub public ) & pids+=($!)
  ( check_binding_timeout ) & pids+=($!)
  ( check_overlap; check_fw_blocks; info_vovida_relay ) & pids+=($!)
  for pid in "${pids[@]}"; do wait "$pid"; done
  for sc in "${SCENARIOS[@]}"; do "$sc"; done
else
  result fail "lab setup" "could not build the topology or start the servers (see messages above)"
fi

sort -k2 "$RES"
passed=$(grep -c '^PASS' "$RES"); failed=$(grep -c '^FAIL' "$RES")
log "took $(( $(date +%s) - START ))s"
echo "netlab: $passed passed, $failed failed"
[ "$failed" = 0 ]
