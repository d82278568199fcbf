#!/bin/sh
# /init of the tcpfsm test VM (see README.md). busybox-static is the only
# userland. Sets up what the privileged tests need, runs every entry of
# /etc/tcpfsm/tests, writes each one's output and exit status between
# markers to the results port (the second serial port, ttyS1, which qemu
# writes to a file on the host), then powers off. Progress goes to the
# console (ttyS0).
#
# /etc/tcpfsm/tests:   one line per run, "KIND NAME DIR TIMEOUT RUN COMMAND...":
#   cd DIR and run COMMAND. KIND "test" is a go test binary: it gets
#   -test.v -test.count=1 -test.timeout=TIMEOUT (its budget), -test.run=RUN
#   (-test.skip=PATTERN for "skip:PATTERN"; nothing for "-"), and then the
#   extra flags; KIND "run" is any other
#   command (TIMEOUT and RUN are "-").
# /etc/tcpfsm/args:    extra go test flags, one a line.
# /etc/tcpfsm/env:     NAME=VALUE, one a line, exported first (run.sh --env).
# /etc/tcpfsm/results: the device the results go to (/dev/ttyS1 on x86-64,
#   the virtio console /dev/hvc0 on arm64's virt machine).

export PATH=/usr/local/bin:/usr/bin:/bin:/sbin
export HOME=/root TMPDIR=/tmp CI=true
# Whether the fentry programs must run here (BPF trampolines: Debian's
# x86-64 6.1 and 6.12) or must be refused (its arm64 6.1), from the kernel
# list.
# (The shell's read: busybox's applets are not linked in yet.)
TCPFSM_EXPECT_FENTRY=1
[ -f /etc/tcpfsm/expect-fentry ] && read -r TCPFSM_EXPECT_FENTRY </etc/tcpfsm/expect-fentry
export TCPFSM_EXPECT_FENTRY
# cmd/tcpfsm's privileged tests build the binary under test; the VM has no
# Go toolchain. The harness built it on the host; the tests use it.
export TCPFSM_BINARY=/opt/tcpfsm/tcpfsm
M='@@tcpfsm-vm@@'
# run.sh --env NAME=VALUE, one a line (e.g. TCPFSM_MASS_PAIRS).
if [ -f /etc/tcpfsm/env ]; then
	while IFS= read -r kv; do
		[ -n "$kv" ] && export "$kv"
	done </etc/tcpfsm/env
fi

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
# The kernel starts init with 1024 files (4096 hard); the tests' helper
# processes hold up to 8,000 sockets each (TestMassGracefulClose), as on
# the host, where systemd allows 524,288 and Go raises its soft limit to
# the hard one.
ulimit -n 65536
hostname tcpfsm-vm
# Modules Debian's cloud kernel does not build in: inet_diag and tcp_diag
# (sock_diag for TCP), veth. Their file names give the load order.
for ko in /lib/modules/*.ko; do [ -f "$ko" ] && insmod "$ko"; done

out=$(cat /etc/tcpfsm/results 2>/dev/null || echo /dev/ttyS1)
# A virtio console appears once its module has probed the device.
for _ in 1 2 3 4 5 6 7 8 9 10; do [ -c "$out" ] && break; sleep 0.5; done
[ -c "$out" ] || out=/dev/console
log() { echo "tcpfsm-init: $*" >/dev/console; }

# Who we are, for the host's report.
{
	echo "$M begin facts"
	echo "kernel $(uname -r) $(uname -v)"
	echo "init started ${boot_secs}s after boot"
	echo "cmdline $(cat /proc/cmdline)"
	echo "cpus $(grep -c ^processor /proc/cpuinfo), memory $(awk '$1 == "MemTotal:" { print $2 " kB" }' /proc/meminfo)"
	echo "tcp $(dmesg | grep -o 'TCP established hash table entries: [0-9]*'), tcp_max_orphans $(cat /proc/sys/net/ipv4/tcp_max_orphans), tcp_max_tw_buckets $(cat /proc/sys/net/ipv4/tcp_max_tw_buckets)"
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
	# The host's iproute2 ss on x86-64 (the gauge tests compare with it).
	if command -v ss >/dev/null; then echo "ss $(ss -V)"; else echo "ss none"; fi
	echo "$M end facts rc=0"
} >"$out" 2>&1

# A suite that runs past its budget panics naming the tests it was
# running, with every goroutine's stack, before the host's timeout kills
# the VM.
set --
if [ -f /etc/tcpfsm/args ]; then
	while IFS= read -r a; do set -- "$@" "$a"; done </etc/tcpfsm/args
fi

while read -r kind name dir budget run cmd; do
	[ -n "$name" ] || continue
	log "running $name"
	start=$(date +%s)
	echo "$M begin $name" >"$out"
	if [ "$kind" = test ]; then
		case $run in
		-) runflag= ;;
		skip:*) runflag=-test.skip=${run#skip:} ;;
		*) runflag=-test.run=$run ;;
		esac
		(cd "$dir" && exec $cmd -test.v -test.count=1 -test.timeout="$budget" $runflag "$@") </dev/null >"$out" 2>&1
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
