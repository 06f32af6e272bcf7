"""Pre-update snapshot of the managed configuration, and its restore (the update rollback).

`take` stores on the host, root-only, in SNAPSHOT_DIR: a tar of the configuration paths the
deploy manages, the list of files under them, the installed package versions and the release
record. `restore` puts those files back (including file modes and owners), deletes files the
update added under those paths, and then reloads/restarts exactly what the restored files
belong to (systemd units, nginx, sshd, nftables, sysctl, ...), checking configs first.

What it does NOT cover: data (databases, Prometheus TSDB: that is what the backup before each
update is for) and package versions. Package downgrades are attempted for packages whose
version changed, but only succeed when apt can still fetch the old version (Debian's mirrors
usually keep only the newest), so a failed package update is reported, not hidden.
"""

from __future__ import annotations

SNAPSHOT_DIR = "/var/lib/rave-ops/pre-update"

# paths (relative to /) the deploy manages; missing ones are skipped
MANAGED_PATHS = (
    "etc/apt/apt.conf.d",
    "etc/apt/sources.list",
    "etc/apt/sources.list.d",
    "etc/default",
    "etc/fail2ban",
    "etc/grafana",
    "etc/nftables.conf",
    "etc/needrestart",
    "etc/nginx",
    "etc/npmrc",
    "etc/postgresql",
    "etc/prometheus",
    "etc/rave",
    "etc/rave-ccr",
    "etc/ssh",
    "etc/sudoers.d",
    "etc/sysctl.d",
    "etc/systemd/system",
    "etc/systemd/timesyncd.conf.d",
    "etc/tmpfiles.d",
)

# restored path (glob, relative) → action; actions run sorted, so the number orders them
RESTORE_ACTIONS = (
    ("etc/systemd/system/*", "0 daemon-reload"),
    ("etc/sysctl.d/*", "1 sysctl"),
    ("etc/nftables.conf", "1 nftables"),
    ("etc/ssh/*", "2 reload-ssh"),
    ("etc/nginx/*", "2 restart nginx"),
    ("etc/fail2ban/*", "2 restart fail2ban"),
    ("etc/postgresql/*", "2 restart postgresql@15-main"),
    ("etc/prometheus/alertmanager*", "2 restart prometheus-alertmanager"),
    ("etc/prometheus/*", "2 restart prometheus"),
    ("etc/default/prometheus-*", "2 restart-default"),
    ("etc/grafana/*", "2 restart grafana-server"),
    ("etc/rave/*", "2 restart-owned"),
    ("etc/rave-ccr/*", "2 restart rave-ccr"),
    ("etc/systemd/timesyncd.conf.d/*", "2 restart systemd-timesyncd"),
)


def _paths_clause() -> str:
    listed = " ".join(MANAGED_PATHS)
    return f'P=""; for p in {listed}; do [ -e "$p" ] && P="$P $p"; done'


def take_script() -> str:
    d = SNAPSHOT_DIR
    return "\n".join(
        [
            "set -eu",
            "umask 077",
            f"mkdir -p {d}",
            "cd /",
            _paths_clause(),
            f"tar -cpf {d}/etc.tar.new $P",
            f"mv {d}/etc.tar.new {d}/etc.tar",
            f"echo $P > {d}/paths",
            f"find $P -xdev \\( -type f -o -type l \\) | sort > {d}/files.list",
            f"dpkg-query -W -f '${{Package}}=${{Version}}\\n' | sort > {d}/packages.list",
            f"cp /etc/rave/release.json {d}/release.json 2>/dev/null || rm -f {d}/release.json",
            f"echo snapshot: $(wc -l < {d}/files.list) files, "
            f"$(wc -l < {d}/packages.list) packages",
        ]
    )


def _case_arms() -> str:
    arms = []
    for pattern, action in RESTORE_ACTIONS:
        if action == "0 daemon-reload":
            # a unit file or drop-in: reload systemd and restart that unit
            arms.append(
                f'    {pattern}) echo "{action}"; u=${{p#etc/systemd/system/}}; '
                'u=${u%%.d/*}; u=${u%%/*}; case "$u" in *.service) '
                'echo "3 restart $u";; esac;;'
            )
        elif action == "2 restart-default":
            arms.append(f'    {pattern}) echo "2 restart ${{p#etc/default/}}";;')
        else:
            arms.append(f'    {pattern}) echo "{action}";;')
    return "\n".join(arms)


def restore_script() -> str:
    d = SNAPSHOT_DIR
    return f"""set -u
cd /
test -f {d}/etc.tar || {{ echo "no snapshot in {d}"; exit 1; }}
P=$(cat {d}/paths)
# files whose content, mode or owner differ from the snapshot, or that are gone
tar -df {d}/etc.tar 2>&1 | grep -v 'Mod time differs' \\
  | sed -n -e 's/^tar: \\(.*\\): Warning: Cannot stat.*/\\1/p' -e 's/^\\([^:]*\\): .*/\\1/p' \\
  | sort -u > {d}/changed.list
find $P -xdev \\( -type f -o -type l \\) | sort > {d}/now.list
comm -13 {d}/files.list {d}/now.list > {d}/added.list
tar -xpf {d}/etc.tar -C /
xargs -r rm -f < {d}/added.list
cat {d}/changed.list {d}/added.list | sort -u > {d}/restored.list
echo "restored $(wc -l < {d}/changed.list) changed files," \
  "removed $(wc -l < {d}/added.list) added files"
while read -r p; do
  case "$p" in
{_case_arms()}
  esac
done < {d}/restored.list | sort -u > {d}/actions.list
status=0
owned=$(systemctl list-unit-files 'rave-*.service' --no-legend 2>/dev/null | awk '{{print $1}}')
while read -r order action unit; do
  echo "action: $action ${{unit:-}}"
  case "$action" in
    daemon-reload) systemctl daemon-reload || status=1;;
    sysctl) sysctl --system >/dev/null || status=1;;
    nftables) nft -c -f /etc/nftables.conf && nft -f /etc/nftables.conf || status=1;;
    reload-ssh) sshd -t && systemctl reload ssh || status=1;;
    restart-owned) for u in $owned; do systemctl try-restart "$u" || status=1; done;;
    restart)
      if [ "$unit" = nginx ]; then nginx -t -q || {{ status=1; continue; }}; fi
      systemctl try-restart "$unit" || status=1;;
  esac
done < {d}/actions.list
# packages: downgrade what changed, when apt can still fetch the old version
dpkg-query -W -f '${{Package}}=${{Version}}\\n' | sort > {d}/packages.now
comm -23 {d}/packages.list {d}/packages.now > {d}/packages.changed
if [ -s {d}/packages.changed ]; then
  echo "packages to downgrade: $(tr '\\n' ' ' < {d}/packages.changed)"
  xargs -r env DEBIAN_FRONTEND=noninteractive apt-get install -y --allow-downgrades \\
    -o Dpkg::Options::=--force-confold < {d}/packages.changed \\
    || {{ echo "package downgrade FAILED (old versions not available?)"; status=1; }}
fi
exit $status
"""
