#!/usr/bin/env bash
# Run tcpfsm's privileged end-to-end tests on more real kernels: each kernel
# of .ci/kernels/kernels (Debian's 6.1 and 6.12 cloud kernels for x86-64,
# its 6.1 cloud kernel for arm64), booted in turn under qemu with software
# emulation (TCG) and a busybox initramfs. See .ci/kernels/README.md.
#
#   .ci/kernels/run.sh [options] [-- go-test-args...]
#
# Options:
#   --kernel NAME          boot only this kernel of .ci/kernels/kernels;
#                          repeatable (default: every kernel, in order)
#   --kernel-package NAME  boot this Debian kernel image package instead of
#                          the one the list names (needs one --kernel)
#   --package PKG          a Go package to test in the VM; repeatable
#                          (default: ./tracer/probe ./tracer/session ./cmd/tcpfsm)
#   --kernel-checks        also run .ci/kernels/kernelcheck (fentry, fexit,
#                          tp_btf, kprobe, helpers) and, on x86-64 when
#                          bpftool is installed on the host, `bpftool
#                          feature probe kernel` in the VM
#   --timeout SECONDS      hard limit for each VM (default: the sum of its
#                          suites' budgets plus the boot allowance)
#   --env NAME=VALUE       set NAME in the VM's environment (the tests');
#                          repeatable, e.g. --env TCPFSM_MASS_PAIRS=6000
#   --tcg-thread single|multi
#                          qemu's TCG threading for the x86-64 VMs
#                          (default multi: one host thread per vCPU)
#   -h, --help
# Arguments after -- go to every test binary, e.g. -- -test.run TestResetAbort
# (test binaries take -test.run, not -run).
#
# Each suite (test binary) runs with -test.timeout set to its budget from
# .ci/kernels/budgets; a suite that runs out panics naming the tests it was
# running, and the report shows them.
#
# Environment: TCPFSM_KERNEL_CACHE (default /var/cache/tcpfsm-kernels) holds
# the unpacked kernels and run.sh's own apt lists; TCPFSM_KERNEL_WORK
# (default bin/kernels in the repository, which git ignores) holds the
# builds, the initramfs and the logs, one directory per kernel.
#
# Exit status: 0 every test passed; 1 a test binary failed; 2 the harness or
# a VM failed (no kernel, build error, timeout, missing results).
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
here=$repo/.ci/kernels
export PATH="$PATH:/usr/local/go/bin"
export DEBIAN_FRONTEND=noninteractive

only=()
kernel_pkg=
packages=()
kernel_checks=false
vm_timeout=
test_args=()
vm_env=()
tcg_thread=multi
while [ $# -gt 0 ]; do
	case $1 in
	--kernel) only+=("${2:?--kernel needs a value}"); shift 2 ;;
	--kernel=*) only+=("${1#*=}"); shift ;;
	--kernel-package) kernel_pkg=${2:?--kernel-package needs a value}; shift 2 ;;
	--kernel-package=*) kernel_pkg=${1#*=}; shift ;;
	--package) packages+=("${2:?--package needs a value}"); shift 2 ;;
	--package=*) packages+=("${1#*=}"); shift ;;
	--kernel-checks) kernel_checks=true; shift ;;
	--timeout) vm_timeout=${2:?--timeout needs a value}; shift 2 ;;
	--timeout=*) vm_timeout=${1#*=}; shift ;;
	--env) vm_env+=("${2:?--env needs NAME=VALUE}"); shift 2 ;;
	--env=*) vm_env+=("${1#*=}"); shift ;;
	--tcg-thread) tcg_thread=${2:?--tcg-thread needs single or multi}; shift 2 ;;
	--tcg-thread=*) tcg_thread=${1#*=}; shift ;;
	-h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
	--) shift; test_args=("$@"); break ;;
	*) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
done
case $tcg_thread in single | multi) ;; *) echo "run.sh: --tcg-thread single or multi" >&2; exit 2 ;; esac
for e in ${vm_env[@]+"${vm_env[@]}"}; do
	case $e in
	[A-Za-z_]*=*) case ${e%%=*} in *[!A-Za-z0-9_]*) echo "run.sh: --env $e: want NAME=VALUE" >&2; exit 2 ;; esac ;;
	*) echo "run.sh: --env $e: want NAME=VALUE" >&2; exit 2 ;;
	esac
done
[ ${#packages[@]} -gt 0 ] || packages=(./tracer/probe ./tracer/session ./cmd/tcpfsm)
if [ -n "$vm_timeout" ]; then
	case $vm_timeout in
	*[!0-9]*) echo "run.sh: --timeout takes whole seconds" >&2; exit 2 ;;
	esac
	[ "$vm_timeout" -ge 120 ] || { echo "run.sh: --timeout below 120s leaves the tests no time" >&2; exit 2; }
fi

# ---- the kernel list -------------------------------------------------------
kernels=() # "NAME ARCH PACKAGE-SPEC FENTRY"
while read -r name arch spec fentry rest; do
	case $name in '' | '#'*) continue ;; esac
	case $fentry in 0 | 1) ;; *) fentry=bad ;; esac
	[ "$fentry" != bad ] && [ -z "$rest" ] || { echo "run.sh: bad line in $here/kernels: $name $arch $spec $fentry $rest" >&2; exit 2; }
	if [ ${#only[@]} -gt 0 ]; then
		keep=false
		for o in "${only[@]}"; do [ "$o" = "$name" ] && keep=true; done
		$keep || continue
	fi
	kernels+=("$name $arch $spec $fentry")
done <"$here/kernels"
if [ ${#only[@]} -gt 0 ] && [ ${#kernels[@]} -ne ${#only[@]} ]; then
	echo "run.sh: --kernel ${only[*]}: the kernels are $(awk '$1 !~ /^#/ && NF { printf "%s ", $1 }' "$here/kernels")" >&2
	exit 2
fi
if [ -n "$kernel_pkg" ] && [ ${#kernels[@]} -ne 1 ]; then
	echo "run.sh: --kernel-package needs exactly one --kernel" >&2
	exit 2
fi

# budget KERNEL SUITE: "SECONDS SUBSET" from .ci/kernels/budgets.
budget() {
	awk -v k="$1" -v s="$2" '
		$1 ~ /^#/ || NF < 3 { next }
		$1 == k && $2 == s { print $3, ($4 == "" ? "-" : $4); found = 1; exit }
		$1 == "DEFAULT" { def = $3 }
		END { if (!found) print (def == "" ? 600 : def), "-" }' "$here/budgets"
}

if [ "$(id -u)" != 0 ]; then
	echo "run.sh: needs root (apt-get, the kernel cache)" >&2
	exit 2
fi
command -v go >/dev/null || { echo "run.sh: go is not on PATH (expected /usr/local/go/bin)" >&2; exit 2; }

cache=${TCPFSM_KERNEL_CACHE:-/var/cache/tcpfsm-kernels}
work=${TCPFSM_KERNEL_WORK:-$repo/bin/kernels}
mkdir -p "$cache" "$work"

# ---- host tools ------------------------------------------------------------
need=()
for k in "${kernels[@]}"; do
	read -r _ arch _ <<<"$k"
	case $arch in
	amd64)
		command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
		# The x86-64 initramfs carries the host's ss (see with_libs).
		command -v ss >/dev/null || need+=(iproute2)
		;;
	arm64)
		command -v qemu-system-aarch64 >/dev/null || need+=(qemu-system-arm)
		# readelf walks the arm64 ss's libraries (arm64_ss).
		command -v readelf >/dev/null || need+=(binutils)
		;;
	*) echo "run.sh: unknown architecture $arch in $here/kernels" >&2; exit 2 ;;
	esac
done
# The initramfs is packed with the host's static busybox (cpio); the amd64
# VMs run it too.
[ "$(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null)" = "install ok installed" ] || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
	mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
	echo "[kernels] installing ${need[*]}"
	if ! apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1; then
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
	fi
fi

# ---- run.sh's own apt --------------------------------------------------------
# Debian 12's archive for amd64 and arm64, with -backports, in lists of
# its own under the cache: apt-get download and apt-cache read them, the
# host's sources.list, dpkg architectures and packages stay as they are.
aptdir=$cache/apt
mkdir -p "$aptdir/lists/partial" "$aptdir/archives/partial"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
{
	for s in bookworm bookworm-updates bookworm-backports; do
		echo "deb [signed-by=$keyring arch=amd64,arm64] http://deb.debian.org/debian $s main"
	done
	echo "deb [signed-by=$keyring arch=amd64,arm64] http://deb.debian.org/debian-security bookworm-security main"
} >"$aptdir/sources.list"
chown -R _apt "$aptdir/lists" "$aptdir/archives" 2>/dev/null || true
apt_opts=(-o "Dir::Etc::SourceList=$aptdir/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
	-o "Dir::State::Lists=$aptdir/lists" -o "Dir::Cache=$aptdir" -o "Dir::Cache::archives=$aptdir/archives"
	-o "APT::Architectures::=amd64" -o "APT::Architectures::=arm64" -o "Acquire::Languages=none")
apt_online=true
echo "[kernels] apt-get update (run.sh's own lists in $aptdir)"
if ! apt-get "${apt_opts[@]}" update -qq >"$work/apt-update.log" 2>&1; then
	echo "[kernels] WARNING: apt-get update failed (offline?); cached kernels only:" >&2
	sed 's/^/[kernels] apt: /' "$work/apt-update.log" | tail -n 5 >&2
	apt_online=false
fi
acache() { apt-cache "${apt_opts[@]}" "$@" 2>/dev/null; }

# resolve SPEC ARCH: the package name.
resolve() {
	local spec=$1 arch=$2
	case $spec in
	depends:*)
		acache depends "${spec#depends:}:$arch" |
			awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { sub(/:.*/, "", $2); print $2; exit }' ;;
	newest:*)
		acache search --names-only "^${spec#newest:}\$" | cut -d' ' -f1 | sed 's/:.*//' | sort -V | tail -n1 ;;
	*) echo "$spec" ;;
	esac
}
candidate() {
	acache policy "$1:$2" | awk '$1 == "Candidate:" && $2 != "(none)" { print $2; exit }'
}

# fetch_deb PKG VERSION ARCH DIR: the package, unpacked into DIR/x.
fetch_deb() {
	local dl=$4
	mkdir -p "$dl"
	chown _apt "$dl" 2>/dev/null || true
	(cd "$dl" && apt-get "${apt_opts[@]}" download -qq "$1:$3=$2" >/dev/null) || return 1
	dpkg-deb -x "$dl"/*.deb "$dl/x"
}

# arm64 busybox for the arm64 initramfs (the host's packs it).
arm64_busybox() {
	local d=$cache/busybox-arm64
	if [ ! -x "$d/busybox" ]; then
		$apt_online || { echo "no arm64 busybox cached in $d and apt is offline" >&2; return 1; }
		local v dl
		v=$(candidate busybox-static arm64)
		[ -n "$v" ] || { echo "apt knows no busybox-static:arm64" >&2; return 1; }
		dl=$(mktemp -d "$cache/.download.XXXXXX")
		fetch_deb busybox-static "$v" arm64 "$dl" || { rm -rf "$dl"; return 1; }
		mkdir -p "$d"
		cp "$dl/x/bin/busybox" "$d/busybox"
		echo "busybox-static:arm64 $v" >"$d/package"
		rm -rf "$dl"
	fi
	echo "$d/busybox"
}

# Debian's iproute2 for arm64 and the packages of the libraries its ss
# links (bookworm: what the host's ss links too). arm64_ss checks the
# closure itself and names any library these do not bring.
ss_arm64_packages="iproute2 libc6 libselinux1 libtirpc3 libbsd0 libmnl0 libcap2 libpcre2-8-0
	libgssapi-krb5-2 libmd0 libkrb5-3 libk5crypto3 libcom-err2 libkrb5support0 libkeyutils1"

# in_tree ROOT PATH: PATH as a file of the unpacked tree ROOT, its
# symlinks followed inside ROOT (an absolute link means ROOT/link, never
# the host's file of that name).
in_tree() {
	local root=$1 p=$2 n=0 l
	while [ -L "$root$p" ] && [ "$n" -lt 40 ]; do
		l=$(readlink "$root$p")
		case $l in /*) p=$l ;; *) p=$(dirname "$p")/$l ;; esac
		n=$((n + 1))
	done
	[ -f "$root$p" ] && [ ! -L "$root$p" ] && echo "$root$p"
}

# arm64_ss: a directory tree with Debian's arm64 ss at usr/bin/ss, the
# shared libraries it needs (its NEEDED entries, walked with readelf:
# ldd cannot run an arm64 binary) and the loader it names, each at the
# path of its package, cached in $cache/ss-arm64_VERSION (VERSION:
# iproute2's) like the kernels; the .debs' names and sums in its
# packages file.
arm64_ss() {
	local v d
	v=$($apt_online && candidate iproute2 arm64 || true)
	if [ -z "$v" ]; then
		d=$(ls -d "$cache"/ss-arm64_*/.complete 2>/dev/null | sed 's|/.complete$||' | sort -V | tail -n1)
		[ -n "$d" ] || { echo "no arm64 ss cached in $cache and apt names no iproute2:arm64 (offline?)" >&2; return 1; }
		echo "[arm64] WARNING: apt cannot name iproute2:arm64; using the cached $(basename "$d")" >&2
		echo "$d/root"
		return 0
	fi
	d=$cache/ss-arm64_$v
	if [ ! -f "$d/.complete" ]; then
		echo "[arm64] fetching iproute2:arm64 $v and its libraries into $d" >&2
		local dl p pv x f interp need soname found todo done_libs=" "
		dl=$(mktemp -d "$cache/.download.XXXXXX")
		mkdir -p "$dl/x"
		chown _apt "$dl" 2>/dev/null || true
		: >"$dl/packages"
		for p in $ss_arm64_packages; do
			pv=$(candidate "$p" arm64)
			[ -n "$pv" ] || { rm -rf "$dl"; echo "apt knows no $p:arm64" >&2; return 1; }
			(cd "$dl" && apt-get "${apt_opts[@]}" download -qq "$p:arm64=$pv" >/dev/null) ||
				{ rm -rf "$dl"; echo "apt-get download $p:arm64=$pv failed" >&2; return 1; }
		done
		for x in "$dl"/*.deb; do
			dpkg-deb -x "$x" "$dl/x"
			echo "$(basename "$x") $(sha256sum "$x" | cut -d' ' -f1)" >>"$dl/packages"
		done
		rm -rf "$d" && mkdir -p "$d/root"
		# ss (the package's /bin/ss) at /usr/bin/ss, as on x86-64, then
		# the loader it names and each library a file of the tree needs,
		# from the directories the loader searches.
		found=$(in_tree "$dl/x" /bin/ss || in_tree "$dl/x" /usr/bin/ss) || { rm -rf "$dl" "$d"; echo "iproute2:arm64 $v has no ss" >&2; return 1; }
		interp=$(readelf -l "$found" | sed -n 's/.*\[Requesting program interpreter: \(.*\)\]/\1/p')
		[ -n "$interp" ] || { rm -rf "$dl" "$d"; echo "readelf finds no interpreter in arm64 ss" >&2; return 1; }
		todo="/usr/bin/ss $interp"
		while [ -n "$todo" ]; do
			set -- $todo
			f=$1
			shift
			todo=$*
			if [ "$f" != /usr/bin/ss ]; then
				found=$(in_tree "$dl/x" "$f") || { rm -rf "$dl" "$d"; echo "arm64 ss needs $f, which none of $ss_arm64_packages has" >&2; return 1; }
			fi
			mkdir -p "$d/root$(dirname "$f")"
			cp "$found" "$d/root$f"
			for soname in $(readelf -d "$found" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
				case $done_libs in *" $soname "*) continue ;; esac
				done_libs="$done_libs$soname "
				need=
				for p in /lib/aarch64-linux-gnu /usr/lib/aarch64-linux-gnu; do
					[ -e "$dl/x$p/$soname" ] && { need=$p/$soname; break; }
				done
				[ -n "$need" ] || { rm -rf "$dl" "$d"; echo "arm64 ss needs $soname (for $f), which none of $ss_arm64_packages has" >&2; return 1; }
				todo="$todo $need"
			done
		done
		cp "$dl/packages" "$d/packages"
		echo "$v" >"$d/.complete"
		rm -rf "$dl"
	fi
	echo "$d/root"
}

# with_libs ROOT FILE: FILE, its shared-library closure (ldd) and the
# dynamic loader into the initramfs ROOT, each at the path the binary
# asks for (symlinks followed: the copy is the file itself). x86-64 only:
# the host's binaries are x86-64.
with_libs() {
	local root=$1 bin=$2 f libs
	libs=$(ldd "$bin") || { echo "ldd $bin failed" >&2; return 1; }
	if grep -q 'not found' <<<"$libs"; then
		echo "ldd $bin: a library is missing on the host:" >&2
		grep 'not found' <<<"$libs" >&2
		return 1
	fi
	for f in "$bin" $(grep -o '/[^ ]*' <<<"$libs" | LC_ALL=C sort -u); do
		mkdir -p "$root$(dirname "$f")"
		cp -L "$f" "$root$f"
	done
}

# Modules the tests need that Debian builds as modules: sock_diag for TCP
# (tcpfsm's snapshot and TIME_WAIT polls), veth; on arm64 also the virtio
# console the results go out on, with what it depends on. Loaded in this
# order.
modules_for() {
	case $1 in
	arm64) echo "virtio_ring virtio virtio_mmio virtio_console inet_diag tcp_diag veth" ;;
	*) echo "inet_diag tcp_diag veth" ;;
	esac
}

# kernel NAME ARCH SPEC: sets kdir to the cached, unpacked kernel.
kernel() {
	local name=$1 arch=$2 spec=$3 pkg version= modules
	modules=$(modules_for "$arch")
	pkg=$kernel_pkg
	if $apt_online; then
		[ -n "$pkg" ] || pkg=$(resolve "$spec" "$arch")
		[ -z "$pkg" ] || version=$(candidate "$pkg" "$arch")
	fi
	if [ -n "$pkg" ] && [ -n "$version" ]; then
		kdir=$cache/${pkg}_${version}_$arch
	else
		# No package lists (offline): the newest cached kernel of this name.
		kdir=$(grep -lx "$name" "$cache"/*/name 2>/dev/null | sed 's|/name$||' | sort -V | tail -n1)
		[ -n "$kdir" ] && [ -f "$kdir/.complete" ] ||
			{ echo "apt names no package for $spec ($arch) and no $name kernel is cached in $cache" >&2; return 1; }
		echo "[$name] WARNING: apt cannot name the kernel package; using the cached $(basename "$kdir")" >&2
		return 0
	fi
	if [ -f "$kdir/.complete" ] && [ "$(cat "$kdir/.complete")" = "$modules" ]; then
		echo "[$name] kernel $pkg $version ($arch, cached in $kdir)"
		return 0
	fi
	echo "[$name] fetching kernel $pkg $version ($arch) into $cache"
	local dl
	dl=$(mktemp -d "$cache/.download.XXXXXX")
	fetch_deb "$pkg" "$version" "$arch" "$dl" || { rm -rf "$dl"; echo "apt-get download $pkg:$arch=$version failed" >&2; return 1; }
	rm -rf "$kdir" && mkdir -p "$kdir/modules"
	cp "$dl"/x/boot/vmlinuz-* "$kdir/vmlinuz"
	cp "$dl"/x/boot/config-* "$kdir/config"
	local n=0 m ko
	for m in $modules; do
		n=$((n + 1))
		ko=$(find "$dl/x/lib/modules" -name "$m.ko" -o -name "$m.ko.xz" | head -1)
		[ -n "$ko" ] || { rm -rf "$dl"; echo "module $m.ko is not in $pkg" >&2; return 1; }
		case $ko in
		*.xz) xz -dc "$ko" >"$kdir/modules/$n-$m.ko" ;;
		*) cp "$ko" "$kdir/modules/$n-$m.ko" ;;
		esac
	done
	basename "$dl"/x/boot/vmlinuz-* | sed 's/^vmlinuz-//' >"$kdir/release"
	echo "$pkg $version $arch $(sha256sum "$dl"/*.deb | cut -d' ' -f1)" >"$kdir/package"
	echo "$name" >"$kdir/name"
	echo "$modules" >"$kdir/.complete"
	rm -rf "$dl"
}

# ---- test binaries, once per architecture ------------------------------------
# build ARCH: static test binaries and tcpfsm into $work/build-ARCH.
build() {
	local arch=$1 b=$work/build-$1 p rel name
	# Built already by this run (run_kernel runs in a subshell).
	[ "$(cat "$b/.run" 2>/dev/null)" != "$run_id" ] || return 0
	rm -rf "$b" && mkdir -p "$b"
	echo "[kernels] building static test binaries (GOARCH=$arch CGO_ENABLED=0) for ${packages[*]}"
	cd "$repo"
	: >"$b/tests"
	for p in "${packages[@]}"; do
		rel=${p#./}
		rel=${rel%/}
		name=${rel//\//-}
		GOARCH=$arch CGO_ENABLED=0 go test -c -o "$b/$name.test" "./$rel" || { echo "go test -c ./$rel failed" >&2; return 1; }
		[ -f "$b/$name.test" ] || { echo "$p has no tests" >&2; return 1; }
		echo "$name $rel" >>"$b/tests"
	done
	GOARCH=$arch CGO_ENABLED=0 go build -o "$b/tcpfsm" ./cmd/tcpfsm || { echo "go build ./cmd/tcpfsm failed" >&2; return 1; }
	if $kernel_checks; then
		GOARCH=$arch CGO_ENABLED=0 go build -o "$b/kernelcheck" ./.ci/kernels/kernelcheck || { echo "go build kernelcheck failed" >&2; return 1; }
	fi
	echo "$run_id" >"$b/.run"
}

M='@@tcpfsm-vm@@'
run_id="$$-$(date +%s)"
summary=$work/summary # one line per suite and kernel, for the table at the end
: >"$summary"
overall=0

# run_kernel NAME ARCH SPEC FENTRY: boots one kernel, runs the suites, reports.
# Returns 0 passed, 1 a test failed, 2 the harness or the VM failed.
run_kernel() {
	local name=$1 arch=$2 spec=$3 fentry=$4 tag="[$1]" kstart=$SECONDS
	local kw=$work/$name kdir krelease busybox
	kernel "$name" "$arch" "$spec" || return 2
	krelease=$(cat "$kdir/release")
	grep -q '^CONFIG_DEBUG_INFO_BTF=y' "$kdir/config" || echo "$tag WARNING: $krelease is built without CONFIG_DEBUG_INFO_BTF; tcpfsm cannot load there" >&2
	build "$arch" || return 2
	local b=$work/build-$arch
	case $arch in
	amd64) busybox=/bin/busybox ;;
	arm64) busybox=$(arm64_busybox) || return 2 ;;
	esac

	# ---- initramfs ----
	rm -rf "$kw" && mkdir -p "$kw"
	local root=$kw/rootfs
	mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,root,etc/tcpfsm,lib/modules,usr/local/bin,opt/tcpfsm,src}
	cp "$busybox" "$root/bin/busybox"
	ln -s busybox "$root/bin/sh"
	install -m 0755 "$here/init.sh" "$root/init"
	cp "$kdir"/modules/*.ko "$root/lib/modules/" 2>/dev/null || true
	install -m 0755 "$b/tcpfsm" "$root/opt/tcpfsm/tcpfsm"
	printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n' >"$root/etc/hosts"
	# iproute2's ss, the kernel's own count that the gauge tests compare
	# with (nettest.RequireTool): the host's binary with its libraries
	# and loader, at /usr/bin/ss; arm64's is Debian's arm64 build with
	# its libraries and loader (arm64_ss).
	case $arch in
	amd64)
		local ss
		ss=$(command -v ss) || { echo "run.sh: the x86-64 initramfs needs iproute2's ss on the host (apt-get install iproute2)" >&2; return 2; }
		with_libs "$root" "$(readlink -f "$ss")" || { echo "run.sh: cannot copy $ss and its libraries into the initramfs" >&2; return 2; }
		[ -x "$root/usr/bin/ss" ] || { mkdir -p "$root/usr/bin" && ln -s "$(readlink -f "$ss")" "$root/usr/bin/ss"; }
		;;
	arm64)
		local sstree
		sstree=$(arm64_ss) || { echo "run.sh: no arm64 ss for the initramfs" >&2; return 2; }
		cp -a "$sstree"/. "$root"/
		;;
	esac
	# The tests read testdata relative to their package directory, as go
	# test runs them; keep the repository's layout under /src.
	(cd "$repo" && find . \( -path ./bin -o -path './.*' \) -prune -o -type d -name testdata -print -prune | sed 's|^\./||') |
		while IFS= read -r d; do
			mkdir -p "$root/src/$(dirname "$d")"
			cp -r "$repo/$d" "$root/src/$d"
		done
	# /etc/tcpfsm/tests: "test NAME DIR TIMEOUT RUN COMMAND" (RUN: the
	# -test.run pattern, - for all) or "run NAME DIR - - COMMAND".
	: >"$root/etc/tcpfsm/tests"
	local suites=() vmsum=0 sname rel secs subset
	while read -r sname rel; do
		read -r secs subset < <(budget "$name" "$sname")
		mkdir -p "$root/src/$rel"
		install -m 0755 "$b/$sname.test" "$root/src/$rel/$sname.test"
		echo "test $sname /src/$rel ${secs}s $subset ./$sname.test" >>"$root/etc/tcpfsm/tests"
		suites+=("$sname $secs $subset")
		vmsum=$((vmsum + secs))
	done <"$b/tests"
	if $kernel_checks; then
		install -m 0755 "$b/kernelcheck" "$root/opt/tcpfsm/kernelcheck"
		echo "run kernelcheck / - - /opt/tcpfsm/kernelcheck" >>"$root/etc/tcpfsm/tests"
		suites+=("kernelcheck 120 -")
		vmsum=$((vmsum + 120))
		# A one-off look with Debian's bpftool (x86-64 only): dynamically
		# linked, so bring its libraries and loader along.
		if [ "$arch" = amd64 ] && command -v bpftool >/dev/null; then
			local bt
			bt=$(readlink -f "$(command -v bpftool)")
			with_libs "$root" "$bt" || return 2
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
			echo "run bpftool-feature-probe / - - bpftool-probe" >>"$root/etc/tcpfsm/tests"
			suites+=("bpftool-feature-probe 60 -")
			vmsum=$((vmsum + 60))
		fi
	fi
	# NAME=VALUE a line, exported by /init before the tests run.
	if [ ${#vm_env[@]} -gt 0 ]; then
		printf '%s\n' "${vm_env[@]}" >"$root/etc/tcpfsm/env"
	else
		: >"$root/etc/tcpfsm/env"
	fi
	if [ ${#test_args[@]} -gt 0 ]; then
		printf '%s\n' "${test_args[@]}" >"$root/etc/tcpfsm/args"
	else
		: >"$root/etc/tcpfsm/args"
	fi
	# Where /init writes the results: a second serial port on x86-64; on
	# arm64's virt machine (one UART) a virtio console.
	local qemu console_dev results_dev mem
	# Every VM has 4 GiB: TestMassGracefulClose's 48,000 sockets,
	# its 64 MiB ring buffer and the helper processes beside the
	# initramfs (which lives in that memory too). TCG maps guest memory
	# as it is touched, so the host pays only for what is used. And the
	# host's TCP hash size (262,144, thash_entries): the kernel sizes it
	# by memory (32,768 in 4 GiB) and derives from it every namespace's
	# limits of time-wait sockets and orphans (half of it). At 16,384
	# the mass close's 24,000 clients overflowed both: the rest were
	# reset, not closed gracefully. arm64's virt machine puts RAM at
	# 1 GiB, so 4 GiB reach above 4 GiB of guest physical addresses:
	# fine for a 64-bit kernel (virt's highmem is on by default, -cpu max
	# has 48-bit physical addresses). With 1 GiB (until 2026-12-03) arm64
	# could not run the mass close.
	local thash=262144
	case $arch in
	amd64) console_dev=ttyS0 results_dev=/dev/ttyS1 mem=4096 ;;
	arm64) console_dev=ttyAMA0 results_dev=/dev/hvc0 mem=4096 ;;
	esac
	echo "$results_dev" >"$root/etc/tcpfsm/results"
	echo "$fentry" >"$root/etc/tcpfsm/expect-fentry"
	local initrd=$kw/initrd.gz
	(cd "$root" && find . | /bin/busybox cpio -o -H newc 2>/dev/null) | gzip -1 >"$initrd"
	echo "$tag initramfs $(du -h "$initrd" | cut -f1) ($(du -sh "$root" | cut -f1) unpacked)"

	# ---- boot ----
	# The VM's limit: every suite's budget, plus time to boot and pack up
	# (TCG boots arm64 in about 20 s, x86-64 in about 5 s).
	local limit=$vm_timeout
	[ -n "$limit" ] || case $arch in amd64) limit=$((vmsum + 60)) ;; arm64) limit=$((vmsum + 120)) ;; esac
	local console=$kw/console.log results=$kw/results.log
	echo "$tag booting $krelease ($arch) under qemu (TCG, 2 CPUs, $((mem / 1024)) GiB), limit ${limit}s, host load average $(cut -d' ' -f1-3 /proc/loadavg); console: $console"
	local start=$SECONDS qrc
	set +e
	case $arch in
	amd64)
		timeout -k 10 "$limit" qemu-system-x86_64 \
			-accel "tcg,thread=$tcg_thread" -cpu max -m "$mem" -smp 2 -nographic -no-reboot \
			-monitor none -nic none \
			-serial "file:$console" -serial "file:$results" \
			-kernel "$kdir/vmlinuz" -initrd "$initrd" \
			-append "console=$console_dev quiet panic=-1 thash_entries=$thash" </dev/null >"$kw/qemu.out" 2>&1
		;;
	arm64)
		timeout -k 10 "$limit" qemu-system-aarch64 \
			-machine virt -accel tcg,thread=multi -cpu max -m "$mem" -smp 2 -nographic -no-reboot \
			-monitor none -nic none \
			-serial "file:$console" \
			-device virtio-serial-device -chardev "file,id=results,path=$results" -device virtconsole,chardev=results \
			-kernel "$kdir/vmlinuz" -initrd "$initrd" \
			-append "console=$console_dev quiet panic=-1 thash_entries=$thash" </dev/null >"$kw/qemu.out" 2>&1
		;;
	esac
	qrc=$?
	set -e
	local elapsed=$((SECONDS - start))
	echo "$tag VM ran ${elapsed}s (qemu exit status $qrc)"

	# ---- results ----
	local fail=0 harness_fail=0
	if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
		echo "$tag ERROR: the VM did not finish within ${limit}s" >&2
		harness_fail=1
	elif [ "$qrc" != 0 ]; then
		echo "$tag ERROR: qemu failed (exit status $qrc):" >&2
		sed "s/^/$tag qemu: /" "$kw/qemu.out" >&2
		harness_fail=1
	fi
	[ -f "$results" ] || : >"$results"
	sed -i 's/\r$//' "$results" "$console" 2>/dev/null || true

	# Kernel facts, then every section's output as go test -v prints it,
	# minus the lines make test drops too. /init writes a newline before
	# each end marker (output may end mid-line); blank lines just before
	# one are dropped.
	awk -v M="$M" -v tag="$tag" '
		$1 == M && $2 == "begin" { sec = $3; blank = 0; next }
		$1 == M && $2 == "end" { sec = ""; blank = 0; next }
		$1 == M { next }
		sec == "" { next }
		$0 == "" { blank++; next }
		$0 ~ /^=== (RUN|PAUSE|CONT|NAME)|^ +--- PASS: Fuzz[A-Za-z]+\// { next }
		{ for (; blank > 0; blank--) print tag; print tag " " $0 }
	' "$results"

	echo "$tag == summary: $krelease ($(cut -d' ' -f1-3 "$kdir/package")), VM ${elapsed}s of ${limit}s, host load average $(cut -d' ' -f1-3 /proc/loadavg)"
	printf '%s %-24s %-6s %8s %8s  %s\n' "$tag" suite result seconds budget "slowest tests / failures"
	local s status end rc took failed slow line
	for s in "${suites[@]}"; do
		read -r sname secs subset <<<"$s"
		end=$(grep -m1 "^$M end $sname " "$results" || true)
		failed=
		took=-
		if ! grep -q "^$M begin $sname\$" "$results"; then
			status=MISSING
			failed="the VM never started it"
			harness_fail=1
		elif [ -z "$end" ]; then
			status=MISSING
			# The VM was killed: name what was running.
			line=$(awk -v M="$M" -v n="$sname" '
				$1 == M && $2 == "begin" { on = ($3 == n); next }
				on && /^=== (RUN|CONT)/ { last = $3 }
				END { print last }' "$results")
			failed="started, never finished; last test started: ${line:-none} (see $console)"
			harness_fail=1
		else
			rc=$(echo "$end" | sed -n 's/.* rc=\([0-9]*\).*/\1/p')
			took=$(echo "$end" | sed -n 's/.* secs=\([0-9]*\).*/\1/p')
			failed=$(awk -v M="$M" -v n="$sname" '
				$1 == M && $2 == "begin" { on = ($3 == n); next }
				$1 == M { on = 0; next }
				on && /^ *--- FAIL: / { print $3 }
				on && /^panic: / && !p { print "(" $0 ")"; p = 1; next }
				on && p == 1 && /^\t*running tests:/ { r = 1; next }
				on && r && /^\t\t/ { sub(/^\t+/, ""); print "[running: " $0 "]"; next }
				on && r { r = 0; p = 2 }' "$results" | tr '\n' ' ')
			if [ "$rc" = 0 ]; then status=ok; else status=FAIL; fail=1; fi
		fi
		# The three slowest tests, to watch the headroom (subtests too: a
		# parent of parallel subtests reports only its own run). awk, not
		# head, takes the first lines: it reads to the end, where head's
		# early exit could kill sort with SIGPIPE, which pipefail and set -e
		# made a harness ERROR for a suite that passed (the cmd suite's
		# summary, 6 times in 300).
		slow=$(awk -v M="$M" -v n="$sname" '
			$1 == M && $2 == "begin" { on = ($3 == n); next }
			$1 == M { on = 0; next }
			on && /^ *--- (PASS|FAIL): / { d = $4; gsub(/[()s]/, "", d); print d, $3 }' "$results" |
			sort -rn | awk 'NR <= 3 { printf "%s %ss, ", $2, $1 }' | sed 's/, $//')
		case $subset in
		-) ;;
		skip:*) failed="subset: -test.skip '${subset#skip:}'; $failed" ;;
		*) failed="subset: -test.run '$subset'; $failed" ;;
		esac
		printf '%s %-24s %-6s %8s %8s  %s\n' "$tag" "$sname" "$status" "$took" "$secs" "${failed:+$failed }${slow:+[$slow]}"
		printf '%-10s %-24s %-6s %8s %8s\n' "$name" "$sname" "$status" "$took" "$secs" >>"$summary"
	done
	# Kernel trouble the tests may not notice.
	if grep -qE 'BUG:|WARNING:|Oops|Kernel panic|Call Trace:|segfault' "$console"; then
		echo "$tag WARNING: the kernel complained on the console:"
		grep -E -A3 'BUG:|WARNING:|Oops|Kernel panic|Call Trace:|segfault' "$console" | awk 'NR <= 40' | sed "s/^/$tag console: /"
	fi
	if ! grep -q "^$M done\$" "$results"; then
		echo "$tag ERROR: the VM did not report completion; last console lines:" >&2
		tail -n 30 "$console" | sed "s/^/$tag console: /" >&2
		harness_fail=1
	fi
	echo "$tag whole kernel ${SECONDS}s since run.sh started, $((SECONDS - kstart))s for this kernel"
	if [ "$harness_fail" != 0 ]; then return 2; fi
	if [ "$fail" != 0 ]; then return 1; fi
	echo "$tag all passed on $krelease ($arch)"
}

for k in "${kernels[@]}"; do
	read -r name arch spec fentry <<<"$k"
	set +e
	(set -e; run_kernel "$name" "$arch" "$spec" "$fentry")
	rc=$?
	set -e
	if [ "$rc" != 0 ] && [ "$rc" != 1 ]; then
		rc=2
		printf '%-10s %-24s %-6s\n' "$name" "(harness)" "ERROR" >>"$summary"
	fi
	[ "$rc" -le "$overall" ] || overall=$rc
done

echo "[kernels] == every kernel (${SECONDS}s in all)"
printf '[kernels] %-10s %-24s %-6s %8s %8s\n' kernel suite result seconds budget
sed 's/^/[kernels] /' "$summary"
exit "$overall"
