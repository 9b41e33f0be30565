#!/usr/bin/env bash
# Installs the Debian 12 packages that building, running and testing irqbypass
# need. Idempotent: packages already present are left as they are.
set -euo pipefail

packages=(
  bazel-bootstrap
  g++
  pkg-config
  protobuf-compiler
  protobuf-compiler-grpc
  libprotobuf-dev
  libgrpc++-dev
  libgrpc-dev
  libabsl-dev
  libgtest-dev
  libgmock-dev
  libbenchmark-dev
  prometheus-cpp-dev
  librocksdb-dev  # the embedded durable store (service/rocksdb_store)
  libjemalloc-dev  # the shipped binaries' allocator (common/allocator.h)
  libyaml-cpp-dev  # irqbypassctl apply -f reads YAML
  etcd-server     # the etcd store's tests run real members on loopback
  prometheus  # promtool and the server, for the observability tests
  jq          # checks the Grafana dashboard JSON (//deploy:deploy_files_test)
  clang         # the thread-safety analysis build (--config=thread_safety)
  libclang-rt-14-dev  # libFuzzer and the sanitizers for --config=fuzz (bench/fuzz.sh)
  clang-format  # the format check in scripts/test.sh
  nghttp2-client  # h2load, the independent generator of bench/h2load_compare.sh
  yamllint        # lints deploy/'s YAML (//deploy:kustomize_test)
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
else
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The Kubernetes schemas deploy/ is validated against (npm, pinned by
# deploy/validate/package-lock.json), with the machine's Node.js.
validate_dir="$(cd "$(dirname "$0")/.." && pwd)/deploy/validate"
if command -v npm >/dev/null; then
  # The lock file a completed install was made from, kept beside it.
  stamp="$validate_dir/node_modules/.installed-from-lock.json"
  if ! cmp -s "$validate_dir/package-lock.json" "$stamp"; then
    echo "install-deps: npm ci in deploy/validate"
    npm ci --prefix "$validate_dir" --no-audit --no-fund --loglevel=error
    cp "$validate_dir/package-lock.json" "$stamp"
  fi
else
  echo "install-deps: no npm here: //deploy:kustomize_test's schema check will fail" >&2
fi
