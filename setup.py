"""condconv_det: CondConv (Yang et al., NeurIPS 2019) for Detectron2.

detectron2 itself is not on PyPI and is therefore not listed in install_requires: install it
first (see docs/install.md, or let `make env` build it from the pinned source distribution).
"""

import os
import sys

from setuptools import find_packages, setup


def native_extensions():
    """The CPU kernel of the bfloat16 kernel mix (condconv_det/layers/csrc/mix.cpp), built as
    ``condconv_det._C`` with torch's extension tools. It is optional: without torch at build
    time, with ``CONDCONV_DET_NATIVE=0`` or where it fails to compile, the package installs
    without it and the layer mixes bfloat16 experts in eager PyTorch (docs/install.md)."""
    if os.environ.get("CONDCONV_DET_NATIVE", "1") == "0":
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        return [], {}

    class OptionalBuildExtension(BuildExtension):
        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as e:  # noqa: BLE001 (any compiler failure: install without it)
                print(
                    f"condconv_det: the native kernel mix was not built ({e}); bfloat16 experts "
                    "are mixed in eager PyTorch (set CONDCONV_DET_NATIVE=0 to skip it)",
                    file=sys.stderr,
                )

    flags = ["-O3", "-fopenmp"] if sys.platform.startswith("linux") else ["-O3"]
    extension = CppExtension(
        "condconv_det._C",
        ["condconv_det/layers/csrc/mix.cpp"],
        extra_compile_args=flags,
        extra_link_args=["-fopenmp"] if sys.platform.startswith("linux") else [],
    )
    return [extension], {"build_ext": OptionalBuildExtension}


ext_modules, cmdclass = native_extensions()

setup(
    name="condconv_det",
    version="0.1.0",
    description="Conditionally parameterized convolutions (CondConv) for Detectron2",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.8",
    packages=find_packages(include=("condconv_det", "condconv_det.*")),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=[
        "torch>=1.13",
        "torchvision>=0.14",
        "fvcore>=0.1.5",
        "pycocotools>=2.0.2",
    ],
    extras_require={
        "test": [
            "pytest>=7",
            # make test runs the test files in parallel worker processes (one per core, up to 4).
            "pytest-xdist>=3",
            "onnx>=1.14",
            "onnxruntime>=1.16",
            "onnxscript>=0.1",
            # EfficientNet-CondConv checkpoint conversion is tested against timm's models (built
            # with random weights: nothing is downloaded); safetensors is its checkpoint format.
            "timm>=0.9",
            "safetensors>=0.3",
            # detectron2's Visualizer (tools/demo.py) draws with OpenCV.
            "opencv-python-headless",
            # The digits dataset (condconv_det.data, content="digits") draws scikit-learn's
            # bundled digit scans.
            "scikit-learn",
            # make lint (run by make test): pinned, since formatting differs between releases.
            "ruff==0.17.6",
        ],
    },
)
