#!/usr/bin/env bash
# Creates (or checks) the project's virtual environment. Idempotent: when nothing that
# decides the environment changed since the last successful run, it returns in a second.
#
#   bash tools/env/setup_env.sh            # environment in ./.venv
#   VENV=/path/to/venv bash tools/env/setup_env.sh
#
# What it installs:
#   - torch==2.14.1, torchvision==0.29.1 (unless torch is already importable there);
#   - detectron2 v0.6 built from PyPI's `pb1-detectron2==0.6` source distribution (pinned by
#     sha256) with an empty native module and the model-zoo configs packaged, unless
#     detectron2 is already importable (a user's own build, e.g. upstream main, is kept);
#   - this plugin in editable mode, with its test extras.
# Every pip call applies tools/env/constraints.txt (detectron2 0.6 needs old numpy/Pillow/...).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
CONSTRAINTS="$ROOT/tools/env/constraints.txt"
D2_SDIST="pb1-detectron2==0.6"
D2_SHA256="5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
BUILD_DIR="$ROOT/build/env"
PY="$VENV/bin/python"

log() { echo "[setup_env] $*"; }

stamp_of() {
    # Everything that decides the environment's content.
    cat "$ROOT/tools/env/setup_env.sh" "$CONSTRAINTS" "$ROOT/setup.py" | sha256sum | cut -d' ' -f1
}
STAMP_FILE="$VENV/.condconv_det_env"
if [ -x "$PY" ] && [ -f "$STAMP_FILE" ] && [ "$(cat "$STAMP_FILE")" = "$(stamp_of)" ]; then
    log "environment up to date: $VENV"
    exit 0
fi

base_python="${PYTHON:-python3}"
if [ ! -x "$PY" ]; then
    venv_args=()
    # A detectron2 the user already has (built against their torch) is kept: the venv then
    # sees the base interpreter's packages and nothing below replaces torch or detectron2.
    if "$base_python" -c "import detectron2" >/dev/null 2>&1; then
        log "detectron2 is importable from $base_python: keeping it (--system-site-packages)"
        venv_args+=(--system-site-packages)
    fi
    log "creating virtual environment $VENV"
    "$base_python" -m venv "${venv_args[@]}" "$VENV"
fi

pip_install() {
    # Local mirrors print a warning per missing package folder; keep the log readable.
    "$PY" -m pip install --disable-pip-version-check -q -c "$CONSTRAINTS" "$@" 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

log "build tools"
pip_install --upgrade pip "setuptools>=77,<81" wheel

if "$PY" -c "import torch, torchvision" >/dev/null 2>&1; then
    log "torch already installed: $("$PY" -c 'import torch; print(torch.__version__)')"
else
    log "installing torch and torchvision (about a minute from the local mirror)"
    pip_install torch==2.14.1 torchvision==0.29.1
fi
# detectron2 0.6's runtime dependencies that pip would otherwise resolve unpinned.
pip_install "numpy<1.24"

if "$PY" -c "import detectron2" >/dev/null 2>&1; then
    log "detectron2 already importable: keeping it ($("$PY" -c 'import detectron2, os; print(os.path.dirname(detectron2.__file__))'))"
else
    log "building detectron2 0.6 from the $D2_SDIST source distribution"
    rm -rf "$BUILD_DIR" && mkdir -p "$BUILD_DIR/dist" "$BUILD_DIR/src"
    # --no-build-isolation: its setup.py imports torch just to read metadata.
    "$PY" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: \
        --no-build-isolation -c "$CONSTRAINTS" -d "$BUILD_DIR/dist" "$D2_SDIST" 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    tarball="$(ls "$BUILD_DIR"/dist/pb1-detectron2-0.6.tar.gz)"
    echo "$D2_SHA256  $tarball" | sha256sum -c --quiet - || {
        echo "[setup_env] ERROR: $tarball does not have the pinned sha256 $D2_SHA256" >&2
        exit 1
    }
    tar xzf "$tarball" -C "$BUILD_DIR/src"
    src="$BUILD_DIR/src/pb1-detectron2-0.6"
    # Its setup.py packages the model-zoo configs from <root>/configs, where the sdist lacks them.
    mv "$src/detectron2/model_zoo/configs" "$src/configs"
    # The sdist has no C++ sources: build a native module without ops. Deformable conv, rotated
    # boxes and the fast COCO evaluator are then unavailable; this project uses none of them.
    # It keeps the three version queries, which detectron2's collect_env_info (called by
    # default_setup in every train_net.py) needs.
    mkdir -p "$src/detectron2/layers/csrc"
    cat > "$src/detectron2/layers/csrc/vision.cpp" <<'CPP'
#include <torch/extension.h>
#include <string>

namespace {
std::string get_compiler_version() {
  return "none: built without detectron2's C++/CUDA ops (condconv_det CPU build)";
}
std::string get_cuda_version() { return "not built"; }
bool has_cuda() { return false; }
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("get_compiler_version", &get_compiler_version);
  m.def("get_cuda_version", &get_cuda_version);
  m.def("has_cuda", &has_cuda);
}
CPP
    (cd "$src" && MAX_JOBS=2 pip_install --no-build-isolation .)
fi

log "installing condconv_det (editable) with its test extras"
pip_install --no-build-isolation -e "$ROOT[test]"

log "verifying"
"$PY" - <<'EOF'
import os
import detectron2
from detectron2 import model_zoo

path = model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml")
assert os.path.isfile(path), path
import condconv_det  # noqa: F401

print("[setup_env] detectron2 at", os.path.dirname(detectron2.__file__))
print("[setup_env] model-zoo config resolves:", path)
EOF
"$PY" -m pip check

stamp_of > "$STAMP_FILE"
log "environment ready: $VENV"
