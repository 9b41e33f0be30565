#!/usr/bin/env bash
# Builds the container images from Debian's archive, with no base image to
# pull: mmdebstrap makes a Debian 12 root file system holding the runtime
# libraries the binaries link (and nothing else), podman imports it as
# localhost/irqbypass-base:bookworm, and podman builds
# localhost/irqbypass/irqbypassd and localhost/irqbypass/irqbypass-agent
# (tag: the version) from the Containerfiles here.
#
#   deploy/images/build.sh [--check] [--out=DIR]
#
# --check also tests the root file system with the binaries in it, without
# a container engine: irqbypassd runs in it (chroot) with --store=memory and
# irqbypassctl, also from it, lists its nodes. Needs root (mmdebstrap,
# chroot) and deb.debian.org. Packages: mmdebstrap, podman (apt-get).
set -euo pipefail
cd "$(dirname "$0")/../.."

check=0 out=""
for arg in "$@"; do
  case "$arg" in
    --check) check=1 ;;
    --out=*) out=${arg#*=} ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done
version=0.1.0
out=${out:-$(mktemp -d /tmp/irqbypass-images.XXXXXX)}
mkdir -p "$out"
for tool in mmdebstrap podman; do
  command -v "$tool" >/dev/null || {
    echo "$tool is missing: apt-get install -y mmdebstrap podman" >&2; exit 1; }
done

bazel build --config=opt --color=no --curses=no //service:irqbypassd \
  //agent:irqbypass-agent //agent/handoff:irqbypass-handoff //client:irqbypassctl >/dev/null
bin=$(bazel info --config=opt bazel-bin 2>/dev/null)
binaries=("$bin/service/irqbypassd" "$bin/agent/irqbypass-agent"
          "$bin/agent/handoff/irqbypass-handoff" "$bin/client/irqbypassctl")

# The Debian packages of every library the binaries link (ldd, then dpkg -S;
# /lib is /usr/lib on Debian 12).
packages=$(for b in "${binaries[@]}"; do ldd "$b" | awk '$3 ~ /^\// { print $3 }'; done |
  sort -u | while read -r lib; do
    dpkg -S "/usr$lib" 2>/dev/null || dpkg -S "$(readlink -f "$lib")"
  done | cut -d: -f1 | sort -u | paste -sd, -)
echo "runtime packages: $packages"
mmdebstrap --variant=minbase --include="$packages,ca-certificates" \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  bookworm "$out/rootfs.tar" http://deb.debian.org/debian
podman import "$out/rootfs.tar" localhost/irqbypass-base:bookworm >/dev/null

ctx="$out/context"
mkdir -p "$ctx"
cp "${binaries[@]}" deploy/images/Containerfile.* "$ctx/"
for image in irqbypassd irqbypass-agent; do
  podman build -q -f "$ctx/Containerfile.$image" -t "localhost/irqbypass/$image:$version" "$ctx" >/dev/null
  echo "built localhost/irqbypass/$image:$version"
done

if [ "$check" = 1 ]; then
  root="$out/root"
  mkdir -p "$root"
  tar -xf "$out/rootfs.tar" -C "$root"
  cp "${binaries[@]}" "$root/usr/local/bin/"
  mount -t proc proc "$root/proc"
  trap 'pkill -f "$root/usr/local/bin/irqbypassd" 2>/dev/null || true; umount "$root/proc" 2>/dev/null || true' EXIT
  # Every library resolves inside the root file system.
  for b in irqbypassd irqbypass-agent irqbypass-handoff irqbypassctl; do
    if chroot "$root" ldd "/usr/local/bin/$b" | grep -q "not found"; then
      echo "FAIL: $b misses libraries in the image:" >&2
      chroot "$root" ldd "/usr/local/bin/$b" | grep "not found" >&2
      exit 1
    fi
  done
  chroot "$root" /usr/local/bin/irqbypassd --store=memory --listen=127.0.0.1:0 \
    --insecure --metrics_listen= --port_file=/tmp/port 2>"$out/irqbypassd.log" &
  for _ in $(seq 1 100); do [ -s "$root/tmp/port" ] && break; sleep 0.1; done
  port=$(cat "$root/tmp/port")
  chroot "$root" /usr/local/bin/irqbypassctl --server="127.0.0.1:$port" --insecure nodes
  help=$(chroot "$root" /usr/local/bin/irqbypass-agent --helpfull 2>&1 || true)  # exits 1
  grep -q -- "--device_plugin_resources" <<<"$help" ||
    { echo "FAIL: irqbypass-agent in the image does not run: $help" >&2; exit 1; }
  echo "PASS: the root file system runs irqbypassd, irqbypassctl and irqbypass-agent"
fi
