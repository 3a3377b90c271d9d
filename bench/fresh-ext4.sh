#!/bin/sh
# Runs batchgate-bench with its data directory on a freshly made ext4 filesystem without a
# journal (like this machine's root filesystem), so that a run does not inherit the inodes
# earlier runs freed: ext4 without a journal searches past every inode freed in the last
# minutes, so figures on a churned disk depend on what ran before (bench/README.md).
# Needs root (a loop mount). Usage: bench/fresh-ext4.sh [batchgate-bench arguments…]
set -eu
bench="${BENCH:-$(dirname "$0")/../target/release/batchgate-bench}"
image="${IMAGE:-/tmp/batchgate-bench-ext4.img}"
mountpoint="${MOUNTPOINT:-/mnt/batchgate-bench}"
mkdir -p "$mountpoint"
umount "$mountpoint" 2>/dev/null || true
rm -f "$image"
truncate -s 4G "$image"
mkfs.ext4 -q -F -O ^has_journal "$image"
mount -o loop "$image" "$mountpoint"
trap 'umount "$mountpoint"; rm -f "$image"' EXIT
TMPDIR="$mountpoint" "$bench" "$@"
