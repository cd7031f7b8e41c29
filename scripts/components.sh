#!/usr/bin/env bash
# Rebuilds the components that ship inside the `headstream` binary (crates/components/wasm/)
# from plugins/, reproducibly: paths that differ between machines (the cargo home, the clone's
# location) are remapped, so the same rustc and sources give the same bytes anywhere.
#
#   scripts/components.sh          rebuild and copy into crates/components/wasm/
#   scripts/components.sh --check  rebuild and fail if the committed bytes differ (CI)
#
# The rustc that built them is recorded in crates/components/wasm/BUILD; --check with another
# rustc cannot compare bytes and says so (exit 0), since codegen differs between releases.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=crates/components/wasm
plugins=(linear-classifier token-classifier prototype-classifier keyword-flags)
check=false
[ "${1:-}" = "--check" ] && check=true

rustc_version=$(rustc -V)
if $check && ! grep -qxF "rustc: $rustc_version" "$out/BUILD"; then
  echo "components: built with '$(sed -n 's/^rustc: //p' "$out/BUILD")', this is '$rustc_version': cannot compare bytes; not checked"
  exit 0
fi

# cargo hashes the absolute path of a path dependency outside the plugins workspace
# (crates/token-features) into symbol names, so the sources are reached through one fixed
# path on every machine (a link, under a lock), and the cargo home is remapped.
stable=/tmp/headstream-components-src
if ! exec 9>>"$stable.lock" || ! flock 9; then
  echo "components: cannot lock $stable.lock (another user's?); remove it or build as its owner" >&2
  exit 1
fi
if [ -e "$stable" ] && { [ ! -L "$stable" ] || [ ! -O "$stable" ]; }; then
  echo "components: $stable exists and is not a link of yours; remove it first" >&2
  exit 1
fi
ln -sfnT "$root" "$stable"
if [ "$(readlink "$stable")" != "$root" ]; then
  echo "components: $stable does not point at $root" >&2
  exit 1
fi
cargo_home=${CARGO_HOME:-$HOME/.cargo}
flags=(-Ctarget-feature=+simd128 "--remap-path-prefix=$cargo_home=/cargo" "--remap-path-prefix=$stable=/headstream")
encoded=$(printf '%s\x1f' "${flags[@]}")
args=()
for p in "${plugins[@]}"; do args+=(-p "$p"); done
(cd "$stable" && CARGO_ENCODED_RUSTFLAGS=${encoded%$'\x1f'} cargo build \
  --manifest-path "$stable/plugins/Cargo.toml" --target wasm32-wasip2 --release \
  --target-dir "$root/target/components-build" --locked "${args[@]}")

status=0
for p in "${plugins[@]}"; do
  built=target/components-build/wasm32-wasip2/release/${p//-/_}.wasm
  if $check; then
    if ! cmp -s "$built" "$out/$p.wasm"; then
      echo "components: $out/$p.wasm is not what plugins/$p builds to now; run scripts/components.sh and commit"
      status=1
    fi
  else
    cp "$built" "$out/$p.wasm"
  fi
done
if ! $check; then
  {
    echo "rustc: $rustc_version"
    (cd "$out" && sha256sum "${plugins[@]/%/.wasm}")
  } >"$out/BUILD"
  echo "components: wrote $out ($(wc -c <"$out/BUILD") bytes of BUILD record)"
fi
exit $status
