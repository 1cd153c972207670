#!/bin/sh
# Run by fsmon-check.service inside a qemu guest whose PID 1 is systemd (see
# tests/tests/systemd_boot.rs): installs /fsmon.deb and checks that the
# package's unit really starts, serves, reloads, stops and purges.
# One line per check on /dev/ttyS1: "OK what", "FAIL what: why", "INFO ...";
# then "DONE" and power off.
out=/dev/ttyS1
ok() { echo "OK $*" >"$out"; }
fail() { echo "FAIL $*" >"$out"; }
info() { echo "INFO $*" >"$out"; }
# wait_for SECONDS COMMAND...: polls until COMMAND succeeds.
wait_for() {
    n=$(($1 * 5)); shift
    while [ "$n" -gt 0 ]; do
        "$@" >/dev/null 2>&1 && return 0
        n=$((n - 1)); sleep 0.2
    done
    return 1
}
active() { [ "$(systemctl is-active fsmon)" = active ]; }
info "kernel $(uname -r), systemd $(systemctl --version | head -1), pid 1 $(cat /proc/1/comm)"

if dpkg -i /fsmon.deb >/tmp/dpkg.log 2>&1; then ok "dpkg -i"; else fail "dpkg -i: $(tr '\n' ' ' </tmp/dpkg.log)"; fi
if wait_for 120 active; then
    ok "the package started fsmon.service"
else
    fail "fsmon.service is $(systemctl is-active fsmon): $(journalctl -u fsmon -o cat --no-pager | tail -20 | tr '\n' '|')"
fi
[ "$(systemctl is-enabled fsmon)" = enabled ] && ok "enabled" || fail "not enabled: $(systemctl is-enabled fsmon)"
pid=$(systemctl show -p MainPID --value fsmon)
if health=$(fsmon --system health 2>&1); then ok "fsmon --system health"; else fail "fsmon --system health: $health"; fi
info "health: $(echo "$health" | tr '\n' ' ' | cut -c1-600)"
for d in /var/lib/fsmon /var/log/fsmon /run/fsmon; do
    [ -d "$d" ] && ok "$d exists ($(stat -c '%a %U:%G' "$d"))" || fail "$d missing"
done
[ -S /run/fsmon/fsmon.sock ] && ok "socket /run/fsmon/fsmon.sock" || fail "no socket in /run/fsmon"

mkdir -p /srv/watched
if o=$(fsmon add _global --path /srv/watched -r 2>&1); then ok "fsmon add (root: system mode)"; else fail "fsmon add: $o"; fi
logged() {
    echo x >>/srv/watched/probe-file
    grep -qs '/srv/watched/probe-file' /var/log/fsmon/*
}
if wait_for 60 logged; then ok "event logged in /var/log/fsmon"; else fail "no event in /var/log/fsmon: $(ls -l /var/log/fsmon | tr '\n' ' ')"; fi
line=$(grep -hs '/srv/watched/probe-file' /var/log/fsmon/* | tail -1)
info "logged: $(echo "$line" | cut -c1-400)"
# The process that wrote is named: the tracker works inside the unit's sandbox.
echo "$line" | grep -q '"cmd"' && ok "event names its process" || fail "event without cmd: $line"
warnings=$(journalctl -u fsmon -p warning -o cat --no-pager)
[ -n "$warnings" ] && info "journal warnings: $(echo "$warnings" | tr '\n' '|' | cut -c1-800)"
# The eBPF tracker loads inside the unit's sandbox (no fallback to /proc).
if echo "$health" | grep -q '"tracker":"ebpf"'; then
    ok "eBPF tracker loaded"
else
    fail "the eBPF tracker did not load under the unit: $health $warnings"
fi

# journald parsed the daemon's <N> priority prefixes: none left in the text,
# the info line is info (shown at -p info, hidden at -p warning).
all=$(journalctl -u fsmon -o cat --no-pager)
if echo "$all" | grep -q '^<[0-7]>'; then
    fail "priority prefixes left in the journal: $(echo "$all" | grep '^<[0-7]>' | head -3 | tr '\n' '|')"
elif journalctl -u fsmon -p info -o cat --no-pager | grep -q 'system mode' &&
    ! echo "$warnings" | grep -q 'system mode'; then
    ok "journal priorities parsed by journald"
else
    fail "journal priorities: the 'system mode' info line is not at info: $(echo "$all" | head -5 | tr '\n' '|')"
fi
info "systemd-analyze security: $(systemd-analyze security fsmon 2>&1 | tail -1)"

# Reload with a store line the daemon cannot read: it warns (a <4> line,
# so journald files it at warning) and keeps running.
echo 'not json' >>/var/lib/fsmon/monitored.jsonl
if o=$(systemctl reload fsmon 2>&1); then ok "systemctl reload succeeds"; else fail "systemctl reload: $o $(journalctl -u fsmon -o cat --no-pager | tail -4 | tr '\n' '|')"; fi
store_warned() { journalctl -u fsmon -p warning -o cat --no-pager | grep -q 'monitored.jsonl'; }
if wait_for 60 store_warned; then
    ok "reload: the unreadable store line is a warning in the journal"
else
    fail "reload: no warning about monitored.jsonl at -p warning: $(journalctl -u fsmon -o cat --no-pager | tail -5 | tr '\n' '|')"
fi
if wait_for 30 active && [ "$(systemctl show -p MainPID --value fsmon)" = "$pid" ]; then
    ok "systemctl reload: still active, same pid $pid"
else
    fail "after reload: $(systemctl is-active fsmon), pid $(systemctl show -p MainPID --value fsmon) (was $pid)"
fi
if o=$(fsmon --system health 2>&1); then ok "health after reload"; else fail "health after reload: $o"; fi

systemctl stop fsmon
state=$(systemctl is-active fsmon)
status=$(systemctl show -p ExecMainStatus --value fsmon)
result=$(systemctl show -p Result --value fsmon)
if [ "$state" = inactive ] && [ "$status" = 0 ] && [ "$result" = success ]; then
    ok "systemctl stop: inactive, exit status 0"
else
    fail "systemctl stop: $state, ExecMainStatus=$status, Result=$result"
fi
kill -0 "$pid" 2>/dev/null && fail "pid $pid still alive after stop" || ok "process gone after stop"

if dpkg --purge fsmon >/tmp/purge.log 2>&1; then ok "dpkg --purge"; else fail "dpkg --purge: $(tr '\n' ' ' </tmp/purge.log)"; fi
for p in /usr/bin/fsmon /etc/fsmon /var/lib/fsmon /var/log/fsmon /lib/systemd/system/fsmon.service; do
    [ -e "$p" ] && fail "$p left after purge" || ok "$p gone"
done
getent group fsmon >/dev/null && fail "group fsmon left after purge" || ok "group fsmon gone"
systemctl cat fsmon >/dev/null 2>&1 && fail "systemd still knows fsmon.service" || ok "unit unknown to systemd after purge"
echo DONE >"$out"
systemctl poweroff
