#!/usr/bin/env bash
# Makes what mTLS between quotactl and quotad's admin listener needs, with
# openssl: a private CA, a server certificate for the admin listener and a
# client certificate for an operator. Every certificate is X.509 v3 with
# the extensions TLS clients and servers check (a plain `openssl x509
# -req` makes a v1 certificate, which rustls refuses):
#
#   scripts/make-certs.sh DIR [SERVER_NAME...]
#
# DIR gets:
#   ca.pem, ca.key          the CA (keep ca.key offline)
#   server.pem, server.key  for admin.tls.cert_file / key_file; valid for
#                           every SERVER_NAME (default: localhost and
#                           127.0.0.1), extendedKeyUsage serverAuth
#   client.pem, client.key  for quotactl --cert-file / --key-file,
#                           extendedKeyUsage clientAuth, CN "operator"
#                           (CLIENT_CN overrides)
# and the config then reads:
#   admin:
#     tls: { cert_file: DIR/server.pem, key_file: DIR/server.key, client_ca_file: DIR/ca.pem }
# with quotactl --server https://localhost:8082 --ca-file DIR/ca.pem
#   --cert-file DIR/client.pem --key-file DIR/client.key.
# Keys are ECDSA P-256 (PKCS#8); certificates last DAYS (default 365).
set -euo pipefail

dir=${1:?usage: scripts/make-certs.sh DIR [SERVER_NAME...]}
shift
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(localhost 127.0.0.1)
days=${DAYS:-365}
client_cn=${CLIENT_CN:-operator}
command -v openssl >/dev/null || { echo "make-certs.sh: openssl is not installed (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$dir"
cd "$dir"
umask 077

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# The subjectAltName list: IP addresses as IP:, the rest as DNS:.
san=""
for n in "${names[@]}"; do
    if [[ $n =~ ^[0-9.]+$ || $n == *:* ]]; then entry="IP:$n"; else entry="DNS:$n"; fi
    san="${san:+$san,}$entry"
done

key ca.key
openssl req -x509 -new -key ca.key -sha256 -days "$days" -subj "/CN=quotad private CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out ca.pem

# issue NAME CN EXTENSIONS: NAME.key and NAME.pem, signed by the CA.
issue() {
    key "$1.key"
    openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr"
    printf '%s\n' "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
        -days "$days" -sha256 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}

issue server "${names[0]}" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$san"
issue client "$client_cn" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
rm -f ca.srl
chmod 644 ca.pem server.pem client.pem
echo "make-certs.sh: wrote $(pwd)/{ca,server,client}.{pem,key} (server names: ${names[*]})"
