#!/bin/sh
# Prints the .env of the compose cluster: an nkey per role (NATTER_<ROLE>_NKEY
# is the public key the NATS nodes read, NATTER_<ROLE>_SEED the seed that
# role's processes use) and an HS256 secret for the edges' JWTs.
#
#   go install github.com/nats-io/nkeys/nk@v0.4.16
#   deploy/compose/nkeys.sh > deploy/compose/.env
set -eu
command -v nk >/dev/null || { echo "nkeys.sh: nk not found; go install github.com/nats-io/nkeys/nk@v0.4.16" >&2; exit 1; }
umask 077
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
for role in edge worker auth service; do
  nk -gen user -pubout > "$tmp"
  up=$(echo "$role" | tr a-z A-Z)
  echo "NATTER_${up}_SEED=$(sed -n 1p "$tmp")"
  echo "NATTER_${up}_NKEY=$(sed -n 2p "$tmp")"
done
echo "NATTER_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
