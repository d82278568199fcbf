#!/bin/sh
# /init of the tcpfsm test VM (see README.md). busybox-static is the only
# userland. Sets up what the privileged tests need, runs every entry of
# /etc/tcpfsm/tests, writes each one's output and exit status between
# markers to the results port (the second serial port, ttyS1, which qemu
# writes to a file on the host), then powers off. Progress goes to the
# console (ttyS0).
#
# /etc/tcpfsm/tests:   one line per run, "KIND NAME DIR COMMAND...": cd DIR
#   and run COMMAND. KIND "test" is a go test binary: it gets -test.v
#   -test.count=1 -test.timeout=(/etc/tcpfsm/test-timeout) and then the
#   extra flags; KIND "run" is any other command.
# /etc/tcpfsm/args:    extra go test flags, one a line.

export PATH=/usr/local/bin:/bin:/sbin
export HOME=/root TMPDIR=/tmp CI=true
# Debian's 6.1 has BPF trampolines: the fentry programs must run there.
export TCPFSM_EXPECT_FENTRY=1
# cmd/tcpfsm's privileged tests build the binary under test; the VM has no
# Go toolchain. The harness built it on the host; the tests use it.
export TCPFSM_BINARY=/opt/tcpfsm/tcpfsm
# tracer/session's TestMassGracefulClose: 24,000 pairs on the host (about
# 6 s); under TCG with 1 GiB, 3,000 pairs keep it within the binary's share
# of the VM's time and memory.
export TCPFSM_MASS_PAIRS=3000
M='@@tcpfsm-vm@@'

/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp /root
mount -t proc proc /proc
read -r boot_secs _ </proc/uptime
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
ip link set lo up
hostname tcpfsm-vm
# Modules Debian's cloud kernel does not build in: inet_diag and tcp_diag
# (sock_diag for TCP), veth. Their file names give the load order.
for ko in /lib/modules/*.ko; do [ -f "$ko" ] && insmod "$ko"; done

out=/dev/ttyS1
[ -c "$out" ] || out=/dev/console
log() { echo "tcpfsm-init: $*" >/dev/console; }

# Who we are, for the host's report.
{
	echo "$M begin facts"
	echo "kernel $(uname -r) $(uname -v)"
	echo "init started ${boot_secs}s after boot"
	echo "cmdline $(cat /proc/cmdline)"
	echo "cpus $(grep -c ^processor /proc/cpuinfo)"
	if [ -f /sys/kernel/btf/vmlinux ]; then
		echo "btf /sys/kernel/btf/vmlinux $(wc -c </sys/kernel/btf/vmlinux) bytes"
	else
		echo "btf missing"
	fi
	echo "mounts $(awk '{printf "%s:%s ", $2, $3}' /proc/mounts)"
	echo "cgroup2 controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
	echo "tracepoints sock: $(ls /sys/kernel/tracing/events/sock 2>/dev/null | grep -v -e '^enable$' -e '^filter$' | tr '\n' ' ')"
	echo "tracepoints tcp: $(ls /sys/kernel/tracing/events/tcp 2>/dev/null | grep -v -e '^enable$' -e '^filter$' | tr '\n' ' ')"
	echo "modules: $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"
	echo "$M end facts rc=0"
} >"$out" 2>&1

# A hung test panics with every goroutine's stack before the host's
# timeout kills the VM.
test_timeout=$(cat /etc/tcpfsm/test-timeout 2>/dev/null || echo 240s)
set --
if [ -f /etc/tcpfsm/args ]; then
	while IFS= read -r a; do set -- "$@" "$a"; done </etc/tcpfsm/args
fi

while read -r kind name dir cmd; do
	[ -n "$name" ] || continue
	log "running $name"
	start=$(date +%s)
	echo "$M begin $name" >"$out"
	if [ "$kind" = test ]; then
		(cd "$dir" && exec $cmd -test.v -test.count=1 -test.timeout="$test_timeout" "$@") </dev/null >"$out" 2>&1
	else
		(cd "$dir" && exec $cmd) </dev/null >"$out" 2>&1
	fi
	rc=$?
	printf '\n%s end %s rc=%s secs=%s\n' "$M" "$name" "$rc" "$(($(date +%s) - start))" >"$out"
	log "$name exited $rc"
done </etc/tcpfsm/tests

echo "$M done" >"$out"
log "all done, powering off"
sync
sleep 1
poweroff -f
