"""Test-session setup that must happen before torch is imported."""

import os

# libgomp's threads spin while waiting for work; with 2 cores, spinning threads starve any other
# process (data-loader workers, the DDP test's second rank): 15-25x slower steps measured.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# make test runs the test files in parallel pytest-xdist workers, one per core: each worker then
# computes on one thread, since two workers with a thread per core each would oversubscribe the
# cores. The training subprocesses that tests start inherit the setting.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
