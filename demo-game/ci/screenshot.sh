#!/usr/bin/env bash
# The demo's screenshot check (CI): build the windowed demo (debug), run it under Xvfb with
# the embedded shard and its bots, capture the window, and check the PNG: not blank, mesh
# lines in a path colour, overlay text. The demo checks the pixels itself before saving;
# check_png.py checks the file again independently (python3, no extra packages).
# Needs: xvfb xauth mesa-vulkan-drivers libvulkan1 python3. Usage: screenshot.sh [OUT.PNG]
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-${CARGO_TARGET_DIR:-target}/demo-screenshot.png}"
mkdir -p "$(dirname "$out")"
rm -f "$out"
cargo build -q -p p2pmodel-demo
bin="${CARGO_TARGET_DIR:-target}/debug/p2pmodel-demo"
# 15 s: the embedded shard and 4 bots connect in ~1 s; software rendering needs ~60 frames
# before the picture is real (the demo waits for them too).
timeout 180 xvfb-run -a -s "-screen 0 1024x768x24" "$bin" --bot --screenshot "$out" --exit-after 15
python3 demo-game/ci/check_png.py "$out"
