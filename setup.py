"""condconv_det: CondConv (Yang et al., NeurIPS 2019) for Detectron2.

detectron2 itself is not on PyPI and is therefore not listed in install_requires: install it
first (see docs/install.md, or let `make env` build it from the pinned source distribution).
"""

from setuptools import find_packages, setup

setup(
    name="condconv_det",
    version="0.1.0",
    description="Conditionally parameterized convolutions (CondConv) for Detectron2",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.8",
    packages=find_packages(include=("condconv_det", "condconv_det.*")),
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
