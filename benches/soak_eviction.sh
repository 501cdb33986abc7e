#!/usr/bin/env bash
# Soak: churns a 32 MiB store with 160 MiB of distinct blobs (5x max_size) from 8 concurrent
# clients on loopback, sampling `du -sb` of the data dir every 100 ms. Prints the disk
# high-water mark and the eviction rate. Bounded (fixed work, 300 s deadline); stops itself.
# SOAK_PACE_MS=1000: each client pauses between images (a fill rate an upstream could give);
# SOAK_GRACE: storage.eviction_grace (min 1s).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --test ops_soak -- --ignored --nocapture soak_churn_five_times_max_size 2>&1 |
  grep -E '^soak:|test result|panicked'
