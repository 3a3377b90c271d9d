#!/usr/bin/env bash
# Builds the demo analyzer's container image offline (no registry needed): a root
# filesystem with a static busybox, the analyzer that batchgate embeds, and the shared
# libraries it links, imported with `podman import` (or `docker import`).
#
#   examples/container/demo-image.sh [BATCHGATE_BINARY] [IMAGE]
#   default: target/debug/batchgate localhost/batchgate-demo:1
set -euo pipefail
cd "$(dirname "$0")/../.."
binary="${1:-target/debug/batchgate}"
image="${2:-localhost/batchgate-demo:1}"
engine="$(command -v podman || command -v docker)"
busybox="$(command -v busybox || true)"
[ -n "$busybox" ] && file -L "$busybox" 2>/dev/null | grep -q static || busybox=/bin/busybox
[ -x "$busybox" ] || { echo "a static busybox is needed (apt-get install busybox-static)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The analyzer batchgate embeds.
analyzer="$work/analyzer"
"$binary" demo-program "$analyzer"

rootfs="$work/rootfs"
mkdir -p "$rootfs/bin" "$rootfs/opt" "$rootfs/tmp" "$rootfs/work"
cp "$busybox" "$rootfs/bin/busybox"
for tool in sh cat dd echo env head id ls printf sleep; do ln -s busybox "$rootfs/bin/$tool"; done
cp "$analyzer" "$rootfs/opt/analyzer"
for library in $(ldd "$analyzer" | grep -o '/[^ ]*'); do
  mkdir -p "$rootfs$(dirname "$library")"
  cp -L "$library" "$rootfs$library"
done
tar -C "$rootfs" -c . | "$engine" import - "$image" > /dev/null
echo "$image"
