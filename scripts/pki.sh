#!/usr/bin/env bash
# A throwaway certificate authority and certificates for irqbypass, made
# with openssl (P-256 keys). For demos and tests; a real fleet issues its
# certificates from its own PKI (see the README's "Security" section for
# what a certificate must carry).
#
#   scripts/pki.sh ca DIR
#       DIR/ca.pem, DIR/ca.key: a new CA (valid 10 years)
#   scripts/pki.sh issue CA_DIR OUT_DIR NAME DAYS [SAN...]
#       OUT_DIR/NAME.pem (signed by CA_DIR's CA) and OUT_DIR/NAME.key, with
#       each SAN as a subject alternative name: a URI (the product's
#       identities), or DNS:NAME / IP:ADDRESS as given (e.g. an etcd
#       member's); DAYS 0 makes a certificate that has expired a second later
#   scripts/pki.sh fleet DIR TRUST_DOMAIN NODE...
#       a CA and what a local fleet needs: server (irqbypassd), agent-NODE
#       for each node, orchestrator, reader and admin
set -euo pipefail
umask 077  # keys are the owner's only, from the first byte

die() { echo "pki.sh: $*" >&2; exit 2; }

new_ca() {
  local dir=$1
  mkdir -p "$dir"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 3650 \
    -subj "/CN=irqbypass CA $(date -u +%Y%m%dT%H%M%S) $RANDOM" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  chmod 600 "$dir/ca.key"
}

issue() {
  local ca_dir=$1 out_dir=$2 name=$3 days=$4
  shift 4
  [ -f "$ca_dir/ca.pem" ] && [ -f "$ca_dir/ca.key" ] || die "no CA in $ca_dir"
  mkdir -p "$out_dir"
  local tmp
  # Beside the files it replaces, so the renames below stay on one file
  # system (atomic); removed whatever happens.
  tmp=$(mktemp -d "$out_dir/.pki.XXXXXX")
  trap 'rm -rf "${tmp:-}"; trap - RETURN' RETURN
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature"
    echo "extendedKeyUsage=serverAuth,clientAuth"
    if [ $# -gt 0 ]; then
      local sans="" uri
      for uri in "$@"; do
        case "$uri" in
          DNS:* | IP:*) sans="${sans:+$sans,}$uri" ;;
          *) sans="${sans:+$sans,}URI:$uri" ;;
        esac
      done
      echo "subjectAltName=$sans"
    fi
  } > "$tmp/ext"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$tmp/key" -out "$tmp/csr" -subj "/CN=$name" 2>/dev/null
  openssl x509 -req -in "$tmp/csr" -CA "$ca_dir/ca.pem" -CAkey "$ca_dir/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days "$days" -extfile "$tmp/ext" \
    -out "$tmp/pem" 2>/dev/null
  chmod 600 "$tmp/key"
  # Renamed into place: a process watching the files never reads half of
  # one. (The key and the certificate are two renames: a process that reads
  # between them sees a mismatched pair and keeps its old one until its next
  # refresh. To rotate a running process's pair at once, swap a directory
  # symlink instead, as a Kubernetes Secret volume does.)
  mv "$tmp/key" "$out_dir/$name.key"
  mv "$tmp/pem" "$out_dir/$name.pem"
  chmod 644 "$out_dir/$name.pem"
}

case "${1:-}" in
  ca)
    [ $# -eq 2 ] || die "usage: pki.sh ca DIR"
    new_ca "$2" ;;
  issue)
    [ $# -ge 5 ] || die "usage: pki.sh issue CA_DIR OUT_DIR NAME DAYS [SAN...]"
    issue "${@:2}" ;;
  fleet)
    [ $# -ge 3 ] || die "usage: pki.sh fleet DIR TRUST_DOMAIN NODE..."
    dir=$2 td=$3
    shift 3
    new_ca "$dir"
    issue "$dir" "$dir" server 30 "spiffe://$td/irqbypass/server/irqbypassd"
    for node in "$@"; do
      issue "$dir" "$dir" "agent-$node" 30 "spiffe://$td/irqbypass/agent/$node"
    done
    for role in orchestrator reader admin; do
      issue "$dir" "$dir" "$role" 30 "spiffe://$td/irqbypass/$role/local"
    done ;;
  *) die "usage: pki.sh ca|issue|fleet ..." ;;
esac
