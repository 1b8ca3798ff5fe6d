#!/usr/bin/env bash
# Smoke test of the p2pmodel OCI image: build it (deploy/oci/mkimage.py), unpack its layers
# with umoci (an independent OCI implementation: it checks every digest and writes the runtime
# bundle, config.json, from the image config), run the whole shard (`shard all`) from that
# root filesystem as the image's user (uid 65532, not root) under `unshare` + `chroot`, with
# the config and secret bind-mounted read-only where Kubernetes mounts them, and let two
# headless bots (`p2pmodel-demo --headless --bot --json`, on the host) play through it: they
# must log in, be introduced, exchange messages (botcheck.py: received, no gaps/dups, clean
# exit). No container runtime: podman's is refused on this CI machine (cgroups in hybrid
# mode), so the rootfs is run the way a runtime would run it, minus cgroups.
#
# Run as root (chroot, mount namespaces). Env: P2PMODEL_RELEASE_BIN (skip the release build),
# P2PMODEL_DEMO_BIN (skip the demo build), CARGO_TARGET_DIR, OCI_SMOKE_KEEP=1 (keep the work
# directory). Exit 0 only when everything passed. ~15 s with warm builds.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
if [ "$(id -u)" != 0 ]; then echo "oci smoke: must run as root" >&2; exit 2; fi
for tool in umoci unshare chroot strip ldd python3 ss pgrep; do
  command -v "$tool" >/dev/null || { echo "oci smoke: missing $tool (apt-get install umoci util-linux coreutils binutils iproute2)" >&2; exit 1; }
done

CHROOT="$(command -v chroot)"
WORK="$(mktemp -d /tmp/p2pm-oci-smoke.XXXXXX)"
SHARD_PID= PID=
cleanup() {
  # unshare --fork ignores SIGTERM; the shard (PID 1 of its namespace) handles it, and
  # --kill-child ends it if unshare itself is killed.
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; fi
  if [ -n "$SHARD_PID" ]; then
    for _ in $(seq 1 30); do kill -0 "$SHARD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SHARD_PID" 2>/dev/null || true
    wait "$SHARD_PID" 2>/dev/null || true
  fi
  if [ "${OCI_SMOKE_KEEP:-0}" = 1 ]; then echo "oci smoke: kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
fail() { echo "oci smoke: FAIL $*"; for f in "$WORK"/shard.log "$WORK"/bot-*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 20 "$f"; }; done; exit 1; }

target_dir() {
  (cd "$ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
}
TARGET="$(target_dir)"
BIN="${P2PMODEL_RELEASE_BIN:-}"
if [ -z "$BIN" ]; then
  (cd "$ROOT" && cargo build -q --release -p p2pmodel-servers --features agones --bin p2pmodel)
  BIN="$TARGET/release/p2pmodel"
fi
DEMO="${P2PMODEL_DEMO_BIN:-}"
if [ -z "$DEMO" ]; then
  (cd "$ROOT" && cargo build -q -p p2pmodel-demo)
  DEMO="$TARGET/debug/p2pmodel-demo"
fi

# 1. The image, then its layers unpacked by umoci into a runtime bundle.
python3 "$HERE/mkimage.py" --binary "$BIN" --out "$WORK/layout" --tag smoke | sed 's/^/oci smoke: /'
umoci unpack --image "$WORK/layout:smoke" "$WORK/bundle" >/dev/null 2>"$WORK/umoci.log" || fail "umoci unpack: $(tail -n 3 "$WORK/umoci.log")"
ROOTFS="$WORK/bundle/rootfs"
# What the runtime would run: user, args and env from the bundle's config.json.
read -r UIDN GIDN ENTRY <<<"$(python3 -c '
import json,sys; p=json.load(open(sys.argv[1]))["process"]
print(p["user"]["uid"], p["user"]["gid"], p["args"][0])' "$WORK/bundle/config.json")"
mapfile -t ENVS < <(python3 -c 'import json,sys; print("\n".join(json.load(open(sys.argv[1]))["process"]["env"]))' "$WORK/bundle/config.json")
[ "$UIDN" != 0 ] && [ "$GIDN" != 0 ] || fail "the image runs as uid $UIDN gid $GIDN (must not be root)"
[ -x "$ROOTFS$ENTRY" ] || fail "entrypoint $ENTRY missing from the unpacked layers"
[ ! -e "$ROOTFS/bin/sh" ] || fail "the image has a shell (it is built from nothing)"

# 2. Config and secret as Kubernetes mounts them (ConfigMap, Secret), on free loopback ports.
free_port() { # a free UDP port pair base (p, p+1) in 20000-59999
  local p
  for _ in $(seq 1 50); do
    p=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
    if ! ss -Hlun "( sport = :$p or sport = :$((p + 1)) )" | grep -q . ; then echo "$p"; return; fi
  done
  fail "no free port"
}
AGENT=$(free_port) RELAY=$(free_port)
mkdir -p "$WORK/config" "$WORK/secret"
env -i "${ENVS[@]}" "$CHROOT" --userspec="$UIDN:$GIDN" "$ROOTFS" "$ENTRY" secret | sed -n 's/^secret = "\(.*\)"$/\1/p' >"$WORK/secret/shard.secret"
[ -s "$WORK/secret/shard.secret" ] || fail "the image's p2pmodel secret printed no secret"
chmod 0444 "$WORK/secret/shard.secret"   # the Secret volume's file, readable by the pod's user
cat >"$WORK/config/shard.toml" <<EOF
[shard]
name = "oci-smoke"
secret_file = "/run/secrets/p2pmodel/shard.secret"
bind = "127.0.0.1"
[relay]
port = $RELAY
alternate_port = $((RELAY + 1))
[agent]
port = $AGENT
login_port = $((AGENT + 1))
[lobby]
store = "/var/lib/p2pmodel/characters.json"
EOF

# 3. The shard from the unpacked rootfs: own mount and PID namespaces, read-only bind mounts,
#    then chroot and drop to the image's user (the host's network, loopback only).
unshare --mount --pid --fork --kill-child -- /bin/sh -c '
  set -e
  r="$1"; w="$2"; shift 2
  mkdir -p "$r/run/secrets/p2pmodel"
  mount --bind "$w/config" "$r/etc/p2pmodel" && mount -o remount,bind,ro "$r/etc/p2pmodel"
  mount --bind "$w/secret" "$r/run/secrets/p2pmodel" && mount -o remount,bind,ro "$r/run/secrets/p2pmodel"
  exec "$@"' sh "$ROOTFS" "$WORK" \
  env -i "${ENVS[@]}" "$CHROOT" --userspec="$UIDN:$GIDN" "$ROOTFS" "$ENTRY" shard all --config /etc/p2pmodel/shard.toml \
  >"$WORK/shard.log" 2>&1 &
SHARD_PID=$!
SERVER=
for _ in $(seq 1 100); do
  SERVER="$(sed -n 's/.*clients join with *--server \([^ ]*\).*/\1/p' "$WORK/shard.log" | head -n 1)"
  [ -n "$SERVER" ] && break
  kill -0 "$SHARD_PID" 2>/dev/null || fail "the shard exited"
  sleep 0.1
done
[ -n "$SERVER" ] || fail "the shard did not print its login address"
# The process really runs as the image's user, with no capabilities.
PID="$(pgrep -P "$SHARD_PID" -n || true)"    # unshare's child: the shard, PID 1 of its namespace
[ -n "$PID" ] && tr '\0' ' ' <"/proc/$PID/cmdline" | grep -q "^$ENTRY shard all" || fail "no shard process under unshare"
read -r _ RUID EUID_ _ <<<"$(grep '^Uid:' "/proc/$PID/status")"
CAPS="$(sed -n 's/^CapEff:\s*//p' "/proc/$PID/status")"
[ "$RUID" = "$UIDN" ] && [ "$EUID_" = "$UIDN" ] || fail "shard runs as uid $RUID/$EUID_, not $UIDN"
[ "$CAPS" = 0000000000000000 ] || fail "shard has capabilities $CAPS"
[ "$(readlink "/proc/$PID/root")" = "$ROOTFS" ] || fail "shard is not chrooted into the unpacked rootfs"
echo "oci smoke: shard pid $PID uid $RUID caps $CAPS root=unpacked rootfs; login $SERVER"

# 4. Two bots play through it; botcheck judges their JSON lines.
BOTS=()
for name in oci-a oci-b; do
  "$DEMO" --headless --bot --json --server "$SERVER" --name "$name" --zone 0 --exit-after 10 \
    >"$WORK/bot-$name.jsonl" 2>"$WORK/bot-$name.log" &
  BOTS+=($!)
done
for b in "${BOTS[@]}"; do wait "$b" || true; done
kill -0 "$PID" 2>/dev/null || fail "the shard died while the bots played"
out="$(python3 "$ROOT/tests/netlab/botcheck.py" "$WORK/bot-oci-a.jsonl" "$WORK/bot-oci-b.jsonl" \
  --expect direct-or-relayed --no-lost --min-received 20)" || fail "bots: $out"
echo "oci smoke: bots $out"
# SIGTERM: the shard stops cleanly (what the kubelet sends on pod deletion).
kill "$PID"
for _ in $(seq 1 50); do kill -0 "$SHARD_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$SHARD_PID" 2>/dev/null && fail "the shard did not stop within 5 s of SIGTERM"
wait "$SHARD_PID" && rc=0 || rc=$?
SHARD_PID= PID=
[ "$rc" = 0 ] || fail "the shard exited with status $rc after SIGTERM"
echo "oci smoke: ok"
