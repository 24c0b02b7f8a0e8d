#!/usr/bin/env bash
# Stages the build context of stevedore's container image from a binary built on this host:
#
#   OUT/Dockerfile   the repository's Dockerfile (FROM scratch)
#   OUT/rootfs/      the binary (stripped), the shared libraries and the dynamic loader it
#                    needs (as ldd names them), the CA bundle, /etc/passwd and /etc/group with
#                    the user stevedore (65532), the container config at
#                    /etc/stevedore/stevedore.toml, /tmp
#   OUT/store/       the (empty) store volume, copied to /var/lib/stevedore owned by 65532
#
# Nothing is downloaded: the image is the host's own build of stevedore and its libraries.
#
# usage: deploy/docker/stage.sh [BINARY [OUT]]
#   BINARY  default target/release/stevedore
#   OUT     default target/docker
# then:    docker build -t stevedore OUT
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
binary="${1:-$repo/target/release/stevedore}"
out="${2:-$repo/target/docker}"
ca_bundle=/etc/ssl/certs/ca-certificates.crt

die() {
  echo "stage.sh: $*" >&2
  exit 1
}

[ -x "$binary" ] || die "$binary: no such executable (cargo build --release first)"
[ -f "$ca_bundle" ] || die "$ca_bundle is missing (apt-get install ca-certificates)"
command -v ldd >/dev/null || die "ldd is missing (apt-get install libc-bin)"

rm -rf "$out/rootfs" "$out/store"
rootfs="$out/rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/stevedore" "$rootfs/etc/ssl/certs" \
  "$rootfs/tmp" "$out/store"
chmod 1777 "$rootfs/tmp"

# The binary, without its debug sections (a debug build is mostly those).
if command -v objcopy >/dev/null; then
  objcopy --strip-debug "$binary" "$rootfs/usr/local/bin/stevedore"
else
  cp "$binary" "$rootfs/usr/local/bin/stevedore"
fi
chmod 0755 "$rootfs/usr/local/bin/stevedore"

# Every library ldd resolves ("libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)") and the
# loader ("/lib64/ld-linux-x86-64.so.2 (0x…)"), at the same paths, symlinks followed.
libs="$(ldd "$binary")" || die "ldd $binary failed (is it a dynamic ELF binary for this host?)"
while read -r path; do
  [ -n "$path" ] || continue
  mkdir -p "$rootfs$(dirname "$path")"
  cp -L "$path" "$rootfs$path"
done < <(printf '%s\n' "$libs" | awk '
  $2 == "=>" && $3 ~ /^\// { print $3; next }
  $1 ~ /^\// { print $1 }')
if printf '%s\n' "$libs" | grep -q "not found"; then
  die "ldd cannot resolve every library of $binary:
$libs"
fi

cp -L "$ca_bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"
cat >"$rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/usr/sbin/nologin
stevedore:x:65532:65532:stevedore:/var/lib/stevedore:/usr/sbin/nologin
PASSWD
cat >"$rootfs/etc/group" <<'GROUP'
root:x:0:
stevedore:x:65532:
GROUP
printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
cp "$repo/deploy/docker/config/stevedore.toml" "$rootfs/etc/stevedore/stevedore.toml"
chmod -R go-w,a+rX "$rootfs"
chmod 1777 "$rootfs/tmp"

cp "$repo/Dockerfile" "$out/Dockerfile"
echo "staged $out ($(du -sh "$rootfs" | cut -f1)): docker build -t stevedore $out"
