"""One training per output folder, and no earlier run overwritten without being asked."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from condconv_det.engine.output_dir import (
    OutputDirInUseError,
    OutputDirNotEmptyError,
    claim_output_dir,
    release_output_dir,
)

# Claims the folder, says so, then waits to be killed.
HOLDER = textwrap.dedent(
    """
    import sys, time
    from condconv_det.engine.output_dir import claim_output_dir

    claim_output_dir(sys.argv[1], resume=False)
    print("claimed", flush=True)
    time.sleep(600)
    """
)


def _holder(path):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "claimed"
    return proc


def test_a_folder_in_use_by_a_running_training_is_refused_until_it_ends(tmp_path):
    out = tmp_path / "run"
    proc = _holder(out)
    try:
        with pytest.raises(OutputDirInUseError) as info:
            claim_output_dir(str(out), resume=True)
        assert str(out) in str(info.value) and f"process {proc.pid}" in str(info.value)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # Killed, the holder leaves its lock file behind but not the lock.
    assert (out / ".train.lock").exists()
    claim_output_dir(str(out), resume=False)
    release_output_dir(str(out))


def test_an_earlier_run_is_not_overwritten_unless_asked(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last_checkpoint").write_text("model_final.pth")
    with pytest.raises(OutputDirNotEmptyError) as info:
        claim_output_dir(str(out), resume=False, key="OUTPUT_DIR")
    message = str(info.value)
    assert "model_final.pth" in message and "--resume" in message and "--overwrite" in message
    for kwargs in (dict(resume=True), dict(resume=False, overwrite=True)):
        claim_output_dir(str(out), **kwargs)
        release_output_dir(str(out))


def test_a_new_folder_is_created_and_claimed(tmp_path):
    out = tmp_path / "new" / "run"
    lock = claim_output_dir(str(out), resume=False)
    try:
        assert out.is_dir() and (out / ".train.lock").read_text() == str(os.getpid())
        assert claim_output_dir(str(out), resume=False) is lock  # the same process may come back
    finally:
        release_output_dir(str(out))


def test_remote_folders_are_left_alone():
    assert claim_output_dir("s3://bucket/run", resume=False) is None


def test_train_net_refuses_to_start_over_a_finished_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last_checkpoint").write_text("model_final.pth")
    (out / "config.yaml").write_text("the earlier run's config\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    start = time.time()
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(root, "tools", "train_net.py"),
            "--config-file",
            os.path.join(root, "configs", "shapes", "ssd_static_MNv1.yaml"),
            "OUTPUT_DIR",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert (
        "holds the checkpoints of an earlier run" in result.stderr
        and "--overwrite" in result.stderr
    )
    assert (out / "config.yaml").read_text() == "the earlier run's config\n"  # untouched
    assert time.time() - start < 120  # refused before any work
