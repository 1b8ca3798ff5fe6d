#!/usr/bin/env python3
"""Per-message figures from the `mesh` criterion bench.

    cargo bench -p p2pmodel-core --bench mesh
    python3 core/benches/mesh_summary.py [CRITERION_DIR]

CRITERION_DIR defaults to $CARGO_TARGET_DIR/criterion (or target/criterion). Uses criterion's
median time per iteration; one `mesh/<case>/<K>` iteration is one 20 Hz tick in which each of
the 2K link ends sends one message, so µs per message = median / 2K (sender and receiver CPU
together). The reference is `aead/seal_open/32`: one 32-byte datagram sealed and opened.
"""
import json
import os
import sys
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("CARGO_TARGET_DIR", "target"))
if root.name != "criterion":
    root = root / "criterion"


def median_ns(group, name, param):
    p = root / group / name / str(param) / "new" / "estimates.json"
    return json.loads(p.read_text())["median"]["point_estimate"]


aead = {(n, s): median_ns("aead", n, s) / 1000 for n in ("seal", "seal_open") for s in (32, 1200)}
ref = aead[("seal_open", 32)]
print("reference (µs): " + ", ".join(f"{n}/{s} {v:.2f}" for (n, s), v in aead.items()))
print(f"{'case':<16} {'K':>3} {'µs/tick':>9} {'µs/msg':>8} {'× seal+open 32 B':>17}")
for case in ("unreliable32", "reliable64"):
    for k in (1, 16):
        t = median_ns("mesh", case, k) / 1000
        per = t / (2 * k)
        print(f"{case:<16} {k:>3} {t:>9.1f} {per:>8.2f} {per / ref:>17.2f}")
