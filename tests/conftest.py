"""Test-session setup that must happen before torch is imported."""

import os

# libgomp's threads spin while waiting for work; with 2 cores, spinning threads starve any other
# process (data-loader workers, the DDP test's second rank): 15-25x slower steps measured.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
