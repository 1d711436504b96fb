#!/usr/bin/env bash
# scripts/test-aarch64.sh -- the aarch64 (ARM64 Linux) build of strata, checked and tested on
# an x86-64 machine: `cargo clippy -D warnings` for aarch64-unknown-linux-gnu (the runner, all
# targets: its NEON kernels are compiled nowhere else), then the runner's unit tests
# (every kernel against the scalar reference, NEON included) run under qemu-user twice: as a
# CPU with the Armv8.2 dot product extension (`sdot`) and as a Cortex-A72 without it
# (Raspberry Pi 4), so that both NEON vocabularies run.
# Installs what it needs: the rustup target, Debian's gcc-aarch64-linux-gnu (linker, and C
# compiler for -sys crates) and qemu-user (apt-get, as root or through sudo).
# Called by scripts/test.sh; STRATA_AARCH64=0 skips it (a SKIP line, as there).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
step() { printf '\n== %s ==\n' "$*" >&2; }
TARGET=aarch64-unknown-linux-gnu

if [[ "${STRATA_AARCH64:-1}" == 0 ]]; then
  echo "SKIP: aarch64 check and tests: STRATA_AARCH64=0" | tee -a "${STRATA_SKIP_LOG:-/dev/null}" >&2
  exit 0
fi

step "aarch64: toolchain (rustup target, cross gcc, qemu-user)"
if ! rustup target list --installed | grep -qx "$TARGET"; then
  rustup target add "$TARGET"
fi
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  SUDO=""
  if [[ "$(id -u)" != 0 ]]; then SUDO=sudo; fi
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q gcc-aarch64-linux-gnu qemu-user >/dev/null
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"

# Only the runner has code of its own for aarch64 (the kernels); the other crates differ only by
# x86-64 fast paths left out, their portable code linted on x86-64 too.
step "aarch64: cargo clippy -D warnings (strata-runner)"
cargo clippy -p strata-runner --all-targets --locked --target "$TARGET" -- -D warnings

# The dev profile, as clippy's: build scripts and proc macros built for clippy are reused (with
# dependencies at opt-level 1 instead, the build took 7 min on a clean clone rather than 5.5).
step "aarch64: runner unit tests under qemu, with sdot"
QEMU_CPU=max cargo test -p strata-runner --lib --locked --target "$TARGET"
QEMU_CPU=max cargo test -p strata-runner --lib --locked --target "$TARGET" \
  every_simd_vocabulary_equals_the_scalar_reference -- --nocapture

step "aarch64: runner unit tests under qemu, Cortex-A72 (no sdot)"
QEMU_CPU=cortex-a72 cargo test -p strata-runner --lib --locked --target "$TARGET"
QEMU_CPU=cortex-a72 cargo test -p strata-runner --lib --locked --target "$TARGET" \
  every_simd_vocabulary_equals_the_scalar_reference -- --nocapture
