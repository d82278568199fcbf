#!/usr/bin/env bash
# Run tcpfsm's privileged end-to-end tests on a second real kernel:
# Debian 12's 6.1 cloud kernel, booted under qemu with software emulation
# (TCG) and a busybox initramfs. See .ci/kernels/README.md.
#
#   .ci/kernels/run.sh [options] [-- go-test-args...]
#
# Options:
#   --kernel-package NAME  Debian kernel image package to boot (default: the
#                          one linux-image-cloud-amd64 depends on today)
#   --package PKG          a Go package to test in the VM; repeatable
#                          (default: ./tracer/probe ./tracer/session ./cmd/tcpfsm)
#   --kernel-checks        also run .ci/kernels/kernelcheck (fentry, fexit,
#                          tp_btf, kprobe, helpers) and, when bpftool is
#                          installed on the host, `bpftool feature probe
#                          kernel` in the VM
#   --timeout SECONDS      hard limit for the VM (default 600)
#   -h, --help
# Arguments after -- go to every test binary, e.g. -- -test.run TestResetAbort
# (test binaries take -test.run, not -run).
#
# Environment: TCPFSM_KERNEL_CACHE (default /var/cache/tcpfsm-kernels) holds
# the unpacked kernels; TCPFSM_KERNEL_WORK (default bin/kernels in the
# repository, which git ignores) holds the build, the initramfs and the logs.
#
# Exit status: 0 every test passed; 1 a test binary failed; 2 the harness or
# the VM failed (no kernel, build error, timeout, missing results).
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
here=$repo/.ci/kernels
export PATH="$PATH:/usr/local/go/bin"
export DEBIAN_FRONTEND=noninteractive

kernel_pkg=
packages=()
kernel_checks=false
vm_timeout=600
test_args=()
while [ $# -gt 0 ]; do
	case $1 in
	--kernel-package) kernel_pkg=${2:?--kernel-package needs a value}; shift 2 ;;
	--kernel-package=*) kernel_pkg=${1#*=}; shift ;;
	--package) packages+=("${2:?--package needs a value}"); shift 2 ;;
	--package=*) packages+=("${1#*=}"); shift ;;
	--kernel-checks) kernel_checks=true; shift ;;
	--timeout) vm_timeout=${2:?--timeout needs a value}; shift 2 ;;
	--timeout=*) vm_timeout=${1#*=}; shift ;;
	-h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
	--) shift; test_args=("$@"); break ;;
	*) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
done
[ ${#packages[@]} -gt 0 ] || packages=(./tracer/probe ./tracer/session ./cmd/tcpfsm)
case $vm_timeout in
*[!0-9]* | "") echo "run.sh: --timeout takes whole seconds" >&2; exit 2 ;;
esac
[ "$vm_timeout" -ge 120 ] || { echo "run.sh: --timeout below 120s leaves the tests no time" >&2; exit 2; }

cache=${TCPFSM_KERNEL_CACHE:-/var/cache/tcpfsm-kernels}
work=${TCPFSM_KERNEL_WORK:-$repo/bin/kernels}
tag="[vm]" # becomes [6.1] once the kernel is known

say() { echo "$tag $*"; }
die() { echo "$tag ERROR: $*" >&2; exit 2; }

if [ "$(id -u)" != 0 ]; then
	die "needs root (apt-get, the kernel cache)"
fi

# ---- tools -----------------------------------------------------------------
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
# The initramfs needs a static busybox: Debian's busybox-static package.
[ "$(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null)" = "install ok installed" ] || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
	say "installing ${need[*]}"
	if ! apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1; then
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
	fi
fi
busybox=/bin/busybox
command -v go >/dev/null || die "go is not on PATH (expected /usr/local/go/bin)"

# ---- kernel ----------------------------------------------------------------
# Each kernel is cached as $cache/PACKAGE_VERSION/{vmlinuz,config,modules/}.
resolve_pkg() {
	apt-cache depends linux-image-cloud-amd64 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }'
}
candidate() {
	apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" && $2 != "(none)" { print $2; exit }'
}
pkg=$kernel_pkg
[ -n "$pkg" ] || pkg=$(resolve_pkg)
if [ -z "$pkg" ] || [ -z "$(candidate "$pkg")" ]; then
	apt-get update -qq >/dev/null 2>&1 || true
	[ -n "$pkg" ] || pkg=$(resolve_pkg)
fi
version=
[ -z "$pkg" ] || version=$(candidate "$pkg")
kdir=
if [ -n "$pkg" ] && [ -n "$version" ]; then
	kdir=$cache/${pkg}_$version
elif [ -z "$kernel_pkg" ]; then
	# No package lists (offline): fall back to the newest cached kernel.
	kdir=$(printf '%s\n' "$cache"/*/.complete | grep -v '\*' | sed 's|/\.complete$||' | sort -V | tail -n1)
	[ -n "$kdir" ] || die "cannot find the Debian 6.1 cloud kernel package (apt-cache depends linux-image-cloud-amd64) and nothing is cached in $cache"
	echo "$tag WARNING: apt cannot name the current kernel package; using the cached $(basename "$kdir")" >&2
else
	die "apt knows no candidate version of $kernel_pkg"
fi

# Modules the tests need that Debian builds as modules: sock_diag for TCP
# (tcpfsm's snapshot and TIME_WAIT polls), veth. Loaded in this order.
modules="inet_diag tcp_diag veth"
if [ -f "$kdir/.complete" ] && [ "$(cat "$kdir/.complete")" = "$modules" ]; then
	say "kernel $(basename "$kdir") (cached in $kdir)"
else
	say "fetching kernel $pkg $version into $cache"
	mkdir -p "$cache"
	dl=$(mktemp -d "$cache/.download.XXXXXX")
	trap 'rm -rf "$dl"' EXIT
	# apt drops privileges to _apt for downloads; let it write there.
	chown _apt "$dl" 2>/dev/null || true
	(cd "$dl" && apt-get download -qq "$pkg=$version" >/dev/null) || die "apt-get download $pkg=$version failed"
	dpkg-deb -x "$dl"/*.deb "$dl/x"
	rm -rf "$kdir" && mkdir -p "$kdir/modules"
	cp "$dl"/x/boot/vmlinuz-* "$kdir/vmlinuz"
	cp "$dl"/x/boot/config-* "$kdir/config"
	n=0
	for m in $modules; do
		n=$((n + 1))
		ko=$(find "$dl/x/lib/modules" -name "$m.ko" | head -1)
		[ -n "$ko" ] || die "module $m.ko is not in $pkg"
		cp "$ko" "$kdir/modules/$n-$m.ko"
	done
	basename "$dl"/x/boot/vmlinuz-* | sed 's/^vmlinuz-//' >"$kdir/release"
	echo "$pkg $version $(sha256sum "$dl"/*.deb | cut -d' ' -f1)" >"$kdir/package"
	echo "$modules" >"$kdir/.complete"
	rm -rf "$dl"
	trap - EXIT
fi
krelease=$(cat "$kdir/release")
tag="[$(echo "$krelease" | cut -d. -f1,2)]"
grep -q '^CONFIG_DEBUG_INFO_BTF=y' "$kdir/config" || echo "$tag WARNING: $krelease is built without CONFIG_DEBUG_INFO_BTF; tcpfsm cannot load there" >&2

# ---- test binaries -----------------------------------------------------------
rm -rf "$work/build" "$work/rootfs"
mkdir -p "$work/build"
say "building static test binaries (CGO_ENABLED=0) for ${packages[*]}"
tests=() # "NAME DIR BINARY"
cd "$repo"
for p in "${packages[@]}"; do
	rel=${p#./}
	rel=${rel%/}
	name=${rel//\//-}
	CGO_ENABLED=0 go test -c -o "$work/build/$name.test" "./$rel" || die "go test -c ./$rel failed"
	[ -f "$work/build/$name.test" ] || die "$p has no tests"
	tests+=("$name $rel $name.test")
done
CGO_ENABLED=0 go build -o "$work/build/tcpfsm" ./cmd/tcpfsm || die "go build ./cmd/tcpfsm failed"
if $kernel_checks; then
	CGO_ENABLED=0 go build -o "$work/build/kernelcheck" ./.ci/kernels/kernelcheck || die "go build kernelcheck failed"
fi

# ---- initramfs ----------------------------------------------------------------
root=$work/rootfs
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,root,etc/tcpfsm,lib/modules,usr/local/bin,opt/tcpfsm,src}
cp "$busybox" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
install -m 0755 "$here/init.sh" "$root/init"
cp "$kdir"/modules/*.ko "$root/lib/modules/" 2>/dev/null || true
install -m 0755 "$work/build/tcpfsm" "$root/opt/tcpfsm/tcpfsm"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n' >"$root/etc/hosts"
# The tests read testdata relative to their package directory, as go test
# runs them; keep the repository's layout under /src.
while IFS= read -r d; do
	mkdir -p "$root/src/$(dirname "$d")"
	cp -r "$d" "$root/src/$d"
done < <(find . \( -path ./bin -o -path './.*' \) -prune -o -type d -name testdata -print -prune | sed 's|^\./||')
: >"$root/etc/tcpfsm/tests"
for t in "${tests[@]}"; do
	read -r name rel bin <<<"$t"
	mkdir -p "$root/src/$rel"
	install -m 0755 "$work/build/$bin" "$root/src/$rel/$bin"
	echo "test $name /src/$rel ./$bin" >>"$root/etc/tcpfsm/tests"
done
# ss (iproute2) for the tests that compare tcpfsm's counts with it
# (nettest.SSStates; busybox has nsenter but no ss): dynamically linked,
# so its libraries and loader come along.
if command -v ss >/dev/null; then
	sb=$(readlink -f "$(command -v ss)")
	for f in "$sb" $(ldd "$sb" | grep -o '/[^ ]*'); do
		mkdir -p "$root$(dirname "$f")"
		cp -L "$f" "$root$f"
	done
	ln -sf "$sb" "$root/usr/local/bin/ss"
fi
if $kernel_checks; then
	install -m 0755 "$work/build/kernelcheck" "$root/opt/tcpfsm/kernelcheck"
	echo "run kernelcheck / /opt/tcpfsm/kernelcheck" >>"$root/etc/tcpfsm/tests"
	# A one-off look with Debian's bpftool: dynamically linked, so bring its
	# libraries and loader along.
	if command -v bpftool >/dev/null; then
		bt=$(readlink -f "$(command -v bpftool)")
		for f in "$bt" $(ldd "$bt" | grep -o '/[^ ]*'); do
			mkdir -p "$root$(dirname "$f")"
			cp -L "$f" "$root$f"
		done
		ln -sf "$bt" "$root/usr/local/bin/bpftool"
		# bpftool reads the kernel's config from /boot.
		mkdir -p "$root/boot"
		cp "$kdir/config" "$root/boot/config-$krelease"
		# Everything but the long per-program-type helper lists.
		cat >"$root/usr/local/bin/bpftool-probe" <<-'EOF'
			#!/bin/sh
			bpftool feature probe kernel | grep -v -e '^	' -e '^eBPF helpers supported' -e '^$'
		EOF
		chmod 0755 "$root/usr/local/bin/bpftool-probe"
		echo "run bpftool-feature-probe / bpftool-probe" >>"$root/etc/tcpfsm/tests"
	fi
fi
# Each test binary gets a share of the VM's time (less a minute for boot
# and the rest) as its -test.timeout.
echo "$(((vm_timeout - 60) / ${#tests[@]}))s" >"$root/etc/tcpfsm/test-timeout"
if [ ${#test_args[@]} -gt 0 ]; then
	printf '%s\n' "${test_args[@]}" >"$root/etc/tcpfsm/args"
else
	: >"$root/etc/tcpfsm/args"
fi
initrd=$work/initrd.gz
(cd "$root" && find . | "$busybox" cpio -o -H newc 2>/dev/null) | gzip -1 >"$initrd"
say "initramfs $(du -h "$initrd" | cut -f1) ($(du -sh "$root" | cut -f1) unpacked)"

# ---- boot ------------------------------------------------------------------------
console=$work/console.log
results=$work/results.log
rm -f "$console" "$results"
say "booting $krelease under qemu (TCG, 2 CPUs, 1 GiB), timeout ${vm_timeout}s; console: $console"
start=$(date +%s)
set +e
timeout -k 10 "$vm_timeout" qemu-system-x86_64 \
	-accel tcg,thread=multi -cpu max -m 1024 -smp 2 -nographic -no-reboot \
	-monitor none -nic none \
	-serial "file:$console" -serial "file:$results" \
	-kernel "$kdir/vmlinuz" -initrd "$initrd" \
	-append "console=ttyS0 quiet panic=-1" </dev/null >"$work/qemu.out" 2>&1
qrc=$?
set -e
elapsed=$(($(date +%s) - start))
say "VM ran ${elapsed}s (qemu exit status $qrc)"

# ---- results ---------------------------------------------------------------------
fail=0
harness_fail=0
if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
	echo "$tag ERROR: the VM did not finish within ${vm_timeout}s" >&2
	harness_fail=1
elif [ "$qrc" != 0 ]; then
	echo "$tag ERROR: qemu failed (exit status $qrc):" >&2
	sed "s/^/$tag qemu: /" "$work/qemu.out" >&2
	harness_fail=1
fi
[ -f "$results" ] || : >"$results"
sed -i 's/\r$//' "$results" "$console" 2>/dev/null || true

# Kernel facts, then every section's output as go test -v prints it, minus
# the lines make test drops too. /init writes a newline before each end
# marker (output may end mid-line); blank lines just before one are dropped.
M='@@tcpfsm-vm@@'
awk -v M="$M" -v tag="$tag" '
	$1 == M && $2 == "begin" { sec = $3; blank = 0; next }
	$1 == M && $2 == "end" { sec = ""; blank = 0; next }
	$1 == M { next }
	sec == "" { next }
	$0 == "" { blank++; next }
	$0 ~ /^=== (RUN|PAUSE|CONT|NAME)|^ +--- PASS: Fuzz[A-Za-z]+\// { next }
	{ for (; blank > 0; blank--) print tag; print tag " " $0 }
' "$results"

echo "$tag == summary: $krelease ($(cut -d' ' -f1,2 "$kdir/package")), VM ${elapsed}s, whole run ${SECONDS}s"
sections=("${tests[@]}")
if $kernel_checks; then
	sections+=("kernelcheck")
	grep -q '^run bpftool-feature-probe ' "$root/etc/tcpfsm/tests" && sections+=("bpftool-feature-probe")
fi
for s in "${sections[@]}"; do
	name=${s%% *}
	end=$(grep -m1 "^$M end $name " "$results" || true)
	if ! grep -q "^$M begin $name\$" "$results"; then
		echo "$tag MISSING $name: the VM never started it"
		harness_fail=1
	elif [ -z "$end" ]; then
		echo "$tag MISSING $name: started, never finished (see $console)"
		harness_fail=1
	else
		rc=$(echo "$end" | sed -n 's/.* rc=\([0-9]*\).*/\1/p')
		secs=$(echo "$end" | sed -n 's/.* secs=\([0-9]*\).*/\1/p')
		failed=$(awk -v M="$M" -v n="$name" '
			$1 == M && $2 == "begin" { on = ($3 == n); next }
			$1 == M { on = 0; next }
			on && /^ *--- FAIL: / { print $3 }
			on && /^panic: / && !p { print "(" $0 ")"; p = 1 }' "$results" | tr '\n' ' ')
		if [ "$rc" = 0 ]; then
			echo "$tag ok   $name (${secs}s)"
		else
			echo "$tag FAIL $name (exit status $rc, ${secs}s)${failed:+: $failed}"
			fail=1
		fi
	fi
done
# Kernel trouble the tests may not notice.
if grep -qE 'BUG:|WARNING:|Oops|Kernel panic|Call Trace:|segfault' "$console"; then
	echo "$tag WARNING: the kernel complained on the console:"
	grep -E -A3 'BUG:|WARNING:|Oops|Kernel panic|Call Trace:|segfault' "$console" | head -n 40 | sed "s/^/$tag console: /"
fi
if ! grep -q "^$M done\$" "$results"; then
	echo "$tag ERROR: the VM did not report completion; last console lines:" >&2
	tail -n 30 "$console" | sed "s/^/$tag console: /" >&2
	harness_fail=1
fi
if [ "$harness_fail" != 0 ]; then exit 2; fi
if [ "$fail" != 0 ]; then exit 1; fi
say "all passed on $krelease"
