#!/usr/bin/env bash
# Starts podman's Docker-compatible API service for the container executor's tests.
# Idempotent. What works on these machines: runc (crun cannot raise RLIMIT_NOFILE here),
# explicit default ulimits, the service on /run/podman/podman.sock. No registry is
# reachable: the tests build their image offline (examples/container/demo-image.sh, which
# needs a static busybox).
set -euo pipefail
socket=/run/podman/podman.sock

need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
[ -x /bin/busybox ] || need+=(busybox-static)
if ((${#need[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}"
fi

mkdir -p /etc/containers
conf=/etc/containers/containers.conf
wanted='[containers]
default_ulimits = ["nofile=1024:20000","nproc=4096:4096"]
[engine]
runtime = "runc"'
if [ "$(cat "$conf" 2>/dev/null)" != "$wanted" ]; then
  printf '%s\n' "$wanted" > "$conf"
  pkill -f "podman system service" || true
fi

answers() { curl -s -o /dev/null --unix-socket "$socket" http://d/_ping; }
if ! answers; then
  mkdir -p "$(dirname "$socket")"
  # From a directory of its own: conmon before 2.1.13 writes a file named `oom` into its
  # working directory when a container is killed for memory (containers/conmon#504).
  (
    cd "$(dirname "$socket")"
    exec > /tmp/podman-service.log 2>&1 < /dev/null
    exec nohup podman system service --time=0 "unix://$socket"
  ) &
  for _ in $(seq 1 30); do answers && break; sleep 1; done
fi
answers || { echo "podman's API service did not start:" >&2; cat /tmp/podman-service.log >&2; exit 1; }
echo "podman $(podman --version | awk '{print $3}') answering on unix://$socket"
