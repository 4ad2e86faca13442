#!/bin/sh
# This node's Ray certificate, issued on the node at each start of Ray by Ray's cluster launcher
# (written by `syntho-agent launcher-config`; docs/launcher.md "Ray's TLS"): a new P-256 key,
# and a certificate from the cluster's CA (delivered beside this script, as the token is) for
# every address the node holds, so that it is right on a cloud whose addresses nobody knew
# before `ray up`. Needs openssl (every image with ca-certificates has it).
#
# Environment: RAY_TLS_OUT (the folder to write node.key and node.crt in), RAY_TLS_DAYS,
# RAY_TLS_SANS (more names or addresses, space-separated). One line on error, exit 1.
set -eu
src=$(cd "$(dirname "$0")" && pwd)
out=${RAY_TLS_OUT:?RAY_TLS_OUT is not set}
days=${RAY_TLS_DAYS:-365}
fail() { echo "ray-tls-issue: $*" >&2; exit 1; }
command -v openssl >/dev/null 2>&1 || fail "openssl is missing in this image: install it (package openssl)"
if [ ! -r "$src/ca.crt" ] || [ ! -r "$src/ca.key" ]; then
    fail "the cluster's CA is not in $src"
fi

sans="DNS:localhost,IP:127.0.0.1"
name=$(hostname 2>/dev/null || true)
[ -n "$name" ] && sans="$sans,DNS:$name"
for address in $(hostname -I 2>/dev/null || true) ${RAY_TLS_SANS:-}; do
    case $address in
        *:*|127.*) ;;  # IPv6 (Ray dials IPv4 here) and loopback (named above)
        *[!0-9.]*) sans="$sans,DNS:$address" ;;
        *) sans="$sans,IP:$address" ;;
    esac
done

umask 077
mkdir -p "$out"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$out/node.key.new" -subj "/O=syntho-agent/CN=ray node $name" \
    -out "$out/node.csr" 2>"$out/openssl.log" || fail "openssl req: $(tail -1 "$out/openssl.log")"
printf 'basicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n' \
    "$sans" > "$out/node.ext"
openssl x509 -req -in "$out/node.csr" -CA "$src/ca.crt" -CAkey "$src/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days "$days" -sha256 -extfile "$out/node.ext" \
    -out "$out/node.crt.new" 2>"$out/openssl.log" || fail "openssl x509: $(tail -1 "$out/openssl.log")"
chmod 644 "$out/node.crt.new"
mv "$out/node.key.new" "$out/node.key"
mv "$out/node.crt.new" "$out/node.crt"
rm -f "$out/node.csr" "$out/node.ext" "$out/openssl.log"
echo "ray-tls-issue: $out/node.crt for $sans, valid $days days"
