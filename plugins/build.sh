#!/usr/bin/env bash
# Builds a Python or JavaScript task head into a WebAssembly component.
#
#   plugins/build.sh DIR [-o OUT.wasm]
#
# DIR holds `app.py` (Python: the SDK in plugins/sdk-python, built by componentize-py) or
# `head.js` (JavaScript: the SDK in plugins/sdk-js, built by componentize-js). The toolchains
# come from the registries at pinned versions, installed on first use: componentize-py into a
# virtual environment under $HEADSTREAM_TOOLS (default target/tools), componentize-js with
# `npm ci` from plugins/sdk-js/package-lock.json. The component lands in OUT (default
# target/heads/NAME.wasm, NAME being DIR's name). Rust heads build with `cargo plugins`.
set -euo pipefail

COMPONENTIZE_PY=0.25.1
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
usage() { echo "usage: plugins/build.sh DIR [-o OUT.wasm]" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
dir=$(cd "$1" 2>/dev/null && pwd) || { echo "error: no head directory $1" >&2; exit 2; }
shift
name=$(basename "$dir")
out="$root/target/heads/$name.wasm"
while [[ $# -gt 0 ]]; do
    case $1 in
        -o) [[ $# -ge 2 ]] || usage; out=$2; shift 2 ;;
        *) usage ;;
    esac
done
mkdir -p "$(dirname "$out")"
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
tools=${HEADSTREAM_TOOLS:-$root/target/tools}

# One build of a toolchain at a time (tests build heads in parallel).
mkdir -p "$tools"
exec 9>"$tools/.build-head.lock"
flock 9

if [[ -f $dir/app.py ]]; then
    venv=$tools/componentize-py-$COMPONENTIZE_PY
    if [[ ! -x $venv/bin/componentize-py ]]; then
        echo "installing componentize-py==$COMPONENTIZE_PY into $venv" >&2
        "${HEADSTREAM_PYTHON:-python3}" -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY"
    fi
    # componentize-py imports `app` from the head's directory, the SDK from plugins/sdk-python.
    (cd "$dir" && "$venv/bin/componentize-py" -d "$root/wit" -w headstream:plugin/task-head@0.2.0 componentize app \
        -p "$dir" -p "$root/plugins/sdk-python" -o "$out" >/dev/null)
elif [[ -f $dir/head.js ]]; then
    sdk=$root/plugins/sdk-js
    stamp=$sdk/node_modules/.headstream-lock
    if ! cmp -s "$sdk/package-lock.json" "$stamp" 2>/dev/null; then
        echo "installing componentize-js (npm ci in $sdk)" >&2
        (cd "$sdk" && npm ci --no-audit --no-fund --loglevel=error >&2)
        cp "$sdk/package-lock.json" "$stamp"
    fi
    # One ES module for componentize-js: the head, the SDK and anything else it imports,
    # bundled; the contract's imports stay imports.
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    "$sdk/node_modules/.bin/rolldown" "$dir/head.js" --format esm --platform neutral \
        --external 'headstream:plugin/host@0.1.0' -o "$work/head.js" --log-level warn >/dev/null
    # componentize-js reads its inputs through a sandbox rooted at the working directory.
    cp -r "$root/wit" "$work/wit"
    (cd "$work" && "$sdk/node_modules/.bin/componentize-js" head.js --wit wit \
        --world-name headstream:plugin/task-head@0.2.0 --disable http fetch-event -o "$out" >/dev/null)
else
    echo "error: $dir has neither app.py (Python) nor head.js (JavaScript); Rust heads build with \`cargo plugins\`" >&2
    exit 2
fi
echo "$out"
