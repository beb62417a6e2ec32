#!/usr/bin/env bash
# Set up what the tvm-aarch64 target needs on a Debian/Ubuntu x86 machine, idempotently:
#   1. the cross toolchain and qemu-user (apt-get: gcc-aarch64-linux-gnu,
#      libc6-dev-arm64-cross, qemu-user);
#   2. an arm64 emulation root: Debian's arm64 python3.11 and the libraries it and TVM link
#      against (apt-get download + dpkg -x, no chroot, no binfmt), plus the aarch64 wheels
#      of apache-tvm, apache-tvm-ffi, numpy, ml_dtypes and typing_extensions at the versions
#      installed in the host virtualenv, unpacked into ROOT/opt/greencc/site-packages.
#
# usage: scripts/setup_aarch64_emulation.sh [ROOT]
#   ROOT defaults to $GREENCC_AARCH64_ROOT, else $GREENCC_CACHE_DIR/aarch64-root
#   (~/.cache/greencc/aarch64-root). PYTHON (default .venv/bin/python, else python3) is the
#   host interpreter whose TVM versions the root mirrors. A second run with nothing changed
#   returns at once. apt-get steps need root (or sudo).
set -euo pipefail

CACHE=${GREENCC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/greencc}
ROOT=${1:-${GREENCC_AARCH64_ROOT:-$CACHE/aarch64-root}}
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
STAMP=opt/greencc/installed.txt
SITE=opt/greencc/site-packages
# Debian bookworm's arm64 Python and what it, numpy and TVM's runtime link against
# (checked with readelf -d on python3.11, libtvm_runtime.so and numpy's extensions).
DEBS=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libgcc-s1
      libstdc++6 libffi8 zlib1g libexpat1 libssl3 libbz2-1.0 liblzma5 libcrypt1 libuuid1
      libsqlite3-0 libtinfo6 libncursesw6 libreadline8)
WHEEL_PACKAGES=(apache-tvm apache-tvm-ffi numpy ml_dtypes typing_extensions)

say() { echo "setup-aarch64: $*" >&2; }

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else say "needs root for: $*"; exit 1
    fi
}

# 1. Host tools.
if ! command -v apt-get >/dev/null; then
    say "apt-get not found: install an AArch64 cross gcc (with its libc), qemu-user, and build the root by hand (docs/tvm.md)"
    exit 1
fi
missing=()
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
if command -v aarch64-linux-gnu-gcc >/dev/null \
        && [[ $(aarch64-linux-gnu-gcc -print-file-name=crti.o) != /* ]]; then
    missing+=(libc6-dev-arm64-cross)
elif ! command -v aarch64-linux-gnu-gcc >/dev/null; then
    missing+=(libc6-dev-arm64-cross)
fi
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
if (( ${#missing[@]} )); then
    say "installing ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" \
        || { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive \
             apt-get install -y --no-install-recommends "${missing[@]}"; }
fi

# 2. The emulation root, unless one for these exact versions is already there.
versions=$("$PYTHON" - "${WHEEL_PACKAGES[@]}" <<'EOF'
import importlib.metadata as metadata, sys
for name in sys.argv[1:]:
    try:
        print(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        sys.exit(f"setup-aarch64: {name} is not installed in {sys.executable}; pip install 'greencc[tvm]' first")
EOF
)
if [[ -f "$ROOT/$STAMP" && "$(cat "$ROOT/$STAMP")" == "$versions" ]]; then
    say "emulation root $ROOT is up to date"
    exit 0
fi

say "building the emulation root in $ROOT"
mkdir -p "$(dirname "$ROOT")"
WORK=$(mktemp -d "$(dirname "$ROOT")/.aarch64-root-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/debs" "$WORK/wheels" "$WORK/root/$SITE"

if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    as_root dpkg --add-architecture arm64
    as_root apt-get update -qq
fi
# apt-get download writes into the current directory, as the _apt user when it can.
chmod 777 "$WORK/debs"
( cd "$WORK/debs" && apt-get download "${DEBS[@]/%/:arm64}" >/dev/null 2>&1 ) || {
    as_root apt-get update -qq
    ( cd "$WORK/debs" && apt-get download "${DEBS[@]/%/:arm64}" >/dev/null )
}
for deb in "$WORK"/debs/*.deb; do dpkg -x "$deb" "$WORK/root"; done

# shellcheck disable=SC2086 # one requirement per line
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 \
    --platform manylinux2014_aarch64 -d "$WORK/wheels" $versions
for wheel in "$WORK"/wheels/*.whl; do
    "$PYTHON" -m zipfile -e "$wheel" "$WORK/root/$SITE"
done

# Check the root before declaring it done: import TVM's runtime under qemu.
TVM_USE_RUNTIME_LIB=1 PYTHONPATH="$WORK/root/$SITE" PYTHONNOUSERSITE=1 \
    qemu-aarch64 -L "$WORK/root" "$WORK/root/usr/bin/python3.11" -c \
    "import platform, numpy, tvm; from tvm.runtime.vm import VirtualMachine; print('setup-aarch64: emulated', platform.machine(), 'python', platform.python_version(), 'tvm', tvm.__version__, 'numpy', numpy.__version__)" >&2
echo "$versions" > "$WORK/root/$STAMP"

rm -rf "$ROOT.old"
[[ -e "$ROOT" ]] && mv "$ROOT" "$ROOT.old"
mv "$WORK/root" "$ROOT"
rm -rf "$ROOT.old"
say "done: $ROOT ($(du -sh "$ROOT" | cut -f1))"
