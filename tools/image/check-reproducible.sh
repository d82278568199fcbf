#!/usr/bin/env bash
# Builds the image a second time from a copy of the sources in another
# directory (same commit, version and SOURCE_DATE_EPOCH; another path,
# another time) and fails unless the two archives are byte for byte the
# same, and so their index digests, and unless no release binary holds
# either source directory (-trimpath).
#   check-reproducible.sh ARCHIVE VERSION REVISION SOURCE_DATE_EPOCH IMAGE
set -euo pipefail
archive=$1 version=$2 revision=$3 epoch=$4 image=$5
here=$(pwd)
copy=$(mktemp -d /tmp/tcpfsm-repro-XXXXXX)
trap 'rm -rf "$copy"' EXIT

# The tracked and untracked (not ignored) files: what this build read.
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$copy"
make -s -C "$copy" image VERSION="$version" REVISION="$revision" SOURCE_DATE_EPOCH="$epoch" IMAGE="$image" >/dev/null

first=$(go -C tools/image run . digest "$here/$archive")
second=$(go -C tools/image run . digest "$copy/$archive")
echo "index digest, build 1 ($here): $first"
echo "index digest, build 2 ($copy): $second"
fail=0
if [ "$first" != "$second" ]; then
	echo "FAIL: the index digests differ"; fail=1
fi
if ! cmp -s "$archive" "$copy/$archive"; then
	echo "FAIL: the archives differ: $(sha256sum "$archive" "$copy/$archive")"; fail=1
fi
if ! cmp -s bin/release/SHA256SUMS "$copy/bin/release/SHA256SUMS"; then
	echo "FAIL: the release binaries differ:"; diff bin/release/SHA256SUMS "$copy/bin/release/SHA256SUMS" || true; fail=1
fi
for dir in "$here" "$copy"; do
	if grep -l -F -- "$dir" bin/release/tcpfsm-linux-* "$copy"/bin/release/tcpfsm-linux-*; then
		echo "FAIL: a release binary holds the build path $dir"; fail=1
	fi
done
[ $fail = 0 ] && echo "reproducible: both builds are $(sha256sum < "$archive" | cut -d' ' -f1) ($(stat -c %s "$archive") bytes)"
exit $fail
