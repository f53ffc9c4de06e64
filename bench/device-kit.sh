#!/usr/bin/env bash
# Packs what bench/device-run.sh needs on a machine with no package registry into
# target/kit: stripped release binaries, Debian's nginx, wrk and caddy unpacked, a font;
# then packs it into target/kit.tgz, the one file to carry (the kit unpacked is
# over the device tool's 64 MiB limit; the tarball is about 36 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --workspace
kit=target/kit
rm -rf "$kit" && mkdir -p "$kit/debs" "$kit/root"
cp "${CARGO_TARGET_DIR:-target}"/release/tessera "${CARGO_TARGET_DIR:-target}"/release/tessera-bench "$kit/"
strip "$kit/tessera" "$kit/tessera-bench"
(cd "$kit/debs" && apt-get download nginx nginx-common wrk libluajit-5.1-2 libluajit-5.1-common caddy)
for d in "$kit"/debs/*.deb; do dpkg -x "$d" "$kit/root"; done
rm -rf "$kit/debs"
cp /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf "$kit/"
du -sh "$kit"
tar -C target -czf target/kit.tgz kit
ls -la target/kit.tgz
