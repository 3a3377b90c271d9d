#!/usr/bin/env bash
# Starts a single-node Slurm cluster (Debian's slurm-wlm and munge) without systemd, for
# the Slurm executor's tests. Idempotent: what already runs is left alone.
# The node name must be `hostname -s`; cons_tres with CR_Core_Memory so that --mem holds.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

if ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge
fi

mkdir -p /run/munge
chown munge:munge /run/munge
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged

mkdir -p /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm /run/slurm /etc/slurm
chown -R slurm:slurm /var/lib/slurm/slurmctld /var/log/slurm /run/slurm

node="$(hostname -s)"
cpus="$(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' | head -1)"
memory="$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)"
memory=$((memory * 9 / 10))
sed -e "s/@NODE@/$node/g" -e "s/@CPUS@/$cpus/g" -e "s/@MEM_MB@/$memory/g" \
  "$here/slurm.conf.in" > /etc/slurm/slurm.conf.new
cp "$here/cgroup.conf" /etc/slurm/cgroup.conf
if ! cmp -s /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf; then
  mv /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf
  # A changed configuration needs fresh daemons.
  pkill -x slurmctld || true
  pkill -x slurmd || true
  sleep 1
else
  rm /etc/slurm/slurm.conf.new
fi

pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld -i
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
for _ in $(seq 1 30); do
  if sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
    sinfo
    exit 0
  fi
  sleep 1
done
echo "Slurm did not come up:" >&2
sinfo >&2 || true
tail -20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
