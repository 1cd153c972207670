#!/bin/busybox sh
# /init of the vm-test guest (cargo xtask vm-test builds the image; see
# xtask/src/vm.rs). Busybox sh, pid 1; /bin/sh is the host's dash, as the
# tests expect.
#
# It mounts what fsmon and the tests need, loads the modules listed in
# /vm/modules (dependencies first), runs each line of /vm/tests.txt (a
# compiled test binary from /fsmon/deps with libtest filters) and powers off.
# Test output goes to the console (ttyS0); the results go to the second
# serial port (ttyS1) as marker lines, one per line, which the host reads:
#   KERNEL <uname -r>
#   MODULE-FAILED <module>
#   TEST <target>::<test> ok|FAILED|ignored
#   RUN <target> exit=<code> tests=<number of tests run>
#   DONE
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
results=/dev/ttyS1

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /var/tmp
mount -t tmpfs tmpfs /run
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ln -sf /proc/self/fd /dev/fd
hostname fsmon-vm
ip link set lo up # the metrics endpoint listens on 127.0.0.1

say() { echo "$*" > "$results"; }

finish() {
    sync
    poweroff -f
}

# The KVM probe of the host: the kernel reached /init, that is all.
if grep -q 'fsmon.vm=probe' /proc/cmdline; then
    say "PROBE ok"
    finish
fi

say "KERNEL $(uname -r)"
while read -r module; do
    insmod "/lib/modules/$(uname -r)/$module" || say "MODULE-FAILED $module"
done < /vm/modules

# What fsmon will find on this kernel, for the console log.
echo "vm-test: /init started $(cut -d' ' -f1 /proc/uptime)s after boot"
echo "vm-test: $(uname -r), $(nproc) cpus, $(free -m | awk '/Mem:/ {print $2}') MB"
ls /sys/kernel/btf/vmlinux

export RUST_BACKTRACE=1
# The tracker churn drill at reduced size (100,000 forks on a host; 10,000
# still overrun its 4,096-entry map of exited processes twice over).
export FSMON_CHURN_FORKS=10000
while read -r target filters; do
    case "$target" in '' | '#'*) continue ;; esac
    echo "vm-test: running $target $filters (at $(cut -d' ' -f1 /proc/uptime)s)"
    # One test at a time: 2 emulated cpus are slow enough.
    # shellcheck disable=SC2086 # the filters are words
    ( "/fsmon/deps/$target" --test-threads=1 $filters < /dev/null 2>&1; echo "exit=$?" > /tmp/vm-exit ) |
        tee /tmp/vm-out > /dev/console
    ran=0
    # "test capture_name ... ok"
    grep -E '^test .* \.\.\. (ok|FAILED|ignored)' /tmp/vm-out > /tmp/vm-tests
    while read -r _ name _ verdict _; do
        say "TEST $target::$name $verdict"
        ran=$((ran + 1))
    done < /tmp/vm-tests
    say "RUN $target $(cat /tmp/vm-exit) tests=$ran"
done < /vm/tests.txt
# For the record: what the kernel warned about during the tests.
echo "vm-test: kernel warnings and errors:"
dmesg -r | grep -E '^<[0-4]>' # busybox dmesg: levels 0 (emerg) to 4 (warning)
say "DONE"
finish
