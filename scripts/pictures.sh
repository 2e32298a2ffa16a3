#!/usr/bin/env bash
# Redraws docs/pictures/: every story of `synod story list`, with seed 1,
# and Figure 8 with Raft's commit rule broken (the `broken` feature). The
# test that keeps the pictures honest (crates/synod-sim/tests/pictures.rs)
# does the drawing; look at `git diff --stat docs/pictures` afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
SYNOD_WRITE_PICTURES=1 cargo test --release -p synod-sim --features broken \
    --test pictures the_docs_pictures_are_the_stories_as_told_now
git status --short docs/pictures
