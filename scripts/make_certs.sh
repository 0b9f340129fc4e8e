#!/usr/bin/env bash
# A throwaway CA with a server certificate (127.0.0.1, localhost, and any further IP addresses
# given) and a client certificate, for trying TLS and mTLS locally and in tests. Never use these
# keys for anything real.
#   scripts/make_certs.sh [DIR] [IP ...]
set -euo pipefail
out=${1:-certs}
shift || true
sans="IP:127.0.0.1,DNS:localhost"
for ip in "$@"; do sans+=",IP:$ip"; done
mkdir -p "$out"
cd "$out"
days=30
subj() { echo "/O=modelwire throwaway/CN=$1"; }

openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days $days -subj "$(subj 'modelwire test CA')" 2>/dev/null

issue() {  # name, subject CN, extensions
    openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$(subj "$2")" 2>/dev/null
    printf '%s\n' "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$1.pem" -days $days -extfile "$1.ext" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}
issue server localhost "subjectAltName=$sans
extendedKeyUsage=serverAuth"
issue client "modelwire test client" "extendedKeyUsage=clientAuth"
rm -f ca.srl
echo "wrote $(pwd)/{ca,server,client}.{pem,key}"
