"""Process settings every tool makes before anything imports torch (it is each tool's first
import).

- ``OMP_WAIT_POLICY=PASSIVE``: libgomp's threads spin while they wait for work, and on a small
  machine that starves the data-loader workers and any other busy process (measured on 2 cores
  with one competing process: 11.3 s per SSD training step spinning, 0.9 s passive). It only
  counts if set before torch is first imported; a value the user set is kept.
- PyTorch marks TorchScript deprecated (``torch.jit.script`` / ``load``), and detectron2 scripts
  some helpers on import, so every tool would start with that notice although it uses none of
  it (``tools/export_model.py --format torchscript`` says so in its help).
"""

import os
import warnings

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
warnings.filterwarnings(
    "ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning
)
