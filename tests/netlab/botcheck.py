#!/usr/bin/env python3
"""Judge one netlab peer scenario from two bots' JSON lines (p2pmodel-demo --headless --bot --json).

usage: botcheck.py A.jsonl B.jsonl --expect direct|relayed|direct-or-relayed
                   [--max-first-ms N] [--max-direct-ms N] [--after-ms N]
                   [--expect-lost] [--no-lost] [--require-direct-after-ms N] [--reconnected]
                   [--same-link]

Prints one line: `ok|fail <figures>`; exit status 0 only for ok. Figures: the final path each side
saw, time from introduction to the first delivered message and to the direct path, RTT, and the
reliable-stream gaps/dups (must be 0). The JSON format is documented in docs/DEMO.md.
"""
import argparse
import json
import sys


def load(path):
    events = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                try:
                    events.append(json.loads(line))
                except ValueError:
                    pass
    except OSError:
        pass
    return events


def summarize(events):
    s = {"connected": False, "paths": [], "first_ms": None, "direct_ms": None, "lost": [],
         "stats": None, "exit": None, "player": None, "shard": []}
    for e in events:
        k = e.get("event")
        if k == "connected":
            s["connected"] = True
            s["player"] = e.get("client")
        elif k == "path":
            s["paths"].append((e.get("path"), e.get("since_intro_ms")))
            s["remote"] = e.get("remote")
            if e.get("path") == "direct" and s["direct_ms"] is None:
                s["direct_ms"] = e.get("since_intro_ms")
            if e.get("path") == "lost":
                s["lost"].append(e.get("since_intro_ms"))
        elif k == "first_message" and s["first_ms"] is None:
            s["first_ms"] = e.get("since_intro_ms")
        elif k == "stats":
            s["stats"] = e
        elif k == "exit":
            s["exit"] = e.get("ok")
        elif k == "shard":
            s["shard"].append(e.get("state"))
    return s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--expect", required=True, choices=["direct", "relayed", "direct-or-relayed"])
    ap.add_argument("--max-first-ms", type=float)
    ap.add_argument("--max-direct-ms", type=float)
    ap.add_argument("--expect-lost", action="store_true",
                    help="at least one side noticed its direct path die: a lost path, or a fail-over "
                         "from direct to the relay (with a second relay bound, the relay path outlives "
                         "the direct one)")
    ap.add_argument("--no-lost", action="store_true", help="no side may report a lost path")
    ap.add_argument("--min-received", type=int, default=1)
    ap.add_argument("--reconnected", action="store_true",
                    help="each side went reconnecting and back in_game (the shard restarted)")
    ap.add_argument("--same-link", action="store_true",
                    help="the peers were introduced once: the link outlived whatever happened")
    ap.add_argument("--relay", help="IP:PORT the final relayed path must go through (the pair's relay)")
    args = ap.parse_args()

    sides = [summarize(load(args.a)), summarize(load(args.b))]
    problems = []
    figs = []
    for name, s in zip("AB", sides):
        if not s["connected"]:
            problems.append(f"{name} never connected")
        final = s["paths"][-1][0] if s["paths"] else "none"
        st = s["stats"] or {}
        peers = st.get("peers") or []
        rtt = peers[0].get("rtt_ms") if peers else None
        gaps = sum(p.get("gaps", 0) for p in peers)
        dups = sum(p.get("dups", 0) for p in peers)
        received = sum(p.get("received", 0) for p in peers)
        figs.append(
            f"{name}:{final} first={s['first_ms']}ms direct={s['direct_ms']}ms "
            f"rtt={rtt if rtt is None else round(rtt, 1)}ms recv={received} gaps={gaps} dups={dups}"
            + (f" lost@{s['lost']}" if s["lost"] else ""))
        if not peers:
            problems.append(f"{name} had no peer in its last stats")
        if gaps or dups:
            problems.append(f"{name} gaps={gaps} dups={dups}")
        if received < args.min_received:
            problems.append(f"{name} received {received} < {args.min_received}")
        if args.expect == "direct" and final != "direct":
            problems.append(f"{name} ended {final}, expected direct")
        if args.expect == "relayed" and final != "relayed":
            problems.append(f"{name} ended {final}, expected relayed")
        if args.expect == "direct-or-relayed" and final not in ("direct", "relayed"):
            problems.append(f"{name} ended {final}")
        if args.relay:
            figs[-1] += f" via={s.get('remote')}"
            if final == "relayed" and s.get("remote") != args.relay:
                problems.append(f"{name} relayed through {s.get('remote')}, expected {args.relay}")
        if args.max_first_ms is not None and (s["first_ms"] is None or s["first_ms"] > args.max_first_ms):
            problems.append(f"{name} first message {s['first_ms']}ms > {args.max_first_ms}ms")
        if args.max_direct_ms is not None and (s["direct_ms"] is None or s["direct_ms"] > args.max_direct_ms):
            problems.append(f"{name} direct at {s['direct_ms']}ms > {args.max_direct_ms}ms")
        # A second introduction restarts the time since the introduction.
        intros = 1 + sum(1 for (_, a), (_, b) in zip(s["paths"], s["paths"][1:])
                         if a is not None and b is not None and b < a)
        if args.same_link and intros > 1:
            problems.append(f"{name} was introduced {intros} times")
        if args.no_lost and s["lost"]:
            problems.append(f"{name} reported lost")
        if args.reconnected:
            st_seq = s["shard"]
            r = st_seq.index("reconnecting") if "reconnecting" in st_seq else None
            if r is None or "in_game" not in st_seq[r:]:
                problems.append(f"{name} shard states {st_seq}: no reconnecting -> in_game")
            figs[-1] += " shard=" + ">".join(st_seq)
        if s["exit"] is not True:
            problems.append(f"{name} exit ok={s['exit']}")
    def failed_over(s):
        names = [p for p, _ in s["paths"]]
        return any(a == "direct" and b == "relayed" for a, b in zip(names, names[1:]))
    if args.expect_lost and not any(s["lost"] or failed_over(s) for s in sides):
        problems.append("no side detected the dead direct path (no lost path, no fail-over to the relay)")
    if args.expect_lost:
        figs[-1] += " detected=" + ",".join(
            n for n, s in zip("AB", sides) if s["lost"] or failed_over(s))
    line = "; ".join(figs)
    if problems:
        print("fail " + line + " | " + "; ".join(problems))
        return 1
    print("ok " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
