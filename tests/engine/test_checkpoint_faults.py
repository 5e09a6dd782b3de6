"""Fault injection for checkpoints: a process killed while it saves leaves the previous
checkpoint and last_checkpoint whole, and --resume continues from them."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from condconv_det.checkpoint import CondConvCheckpointer

# Saves "model_final" once with weight 1.0, then again with weight 2.0, killed (SIGKILL) once
# the second save has written half its bytes (STAGE "model"), or saves "model_0000001" and is
# killed while it names it in last_checkpoint (STAGE "tag").
CHILD = textwrap.dedent(
    """
    import os, signal, sys, torch
    from condconv_det.checkpoint import CondConvCheckpointer

    out, stage = sys.argv[1], sys.argv[2]
    model = torch.nn.Linear(64, 64)
    torch.nn.init.constant_(model.weight, 1.0)
    checkpointer = CondConvCheckpointer(model, out)
    checkpointer.save("model_final")
    torch.nn.init.constant_(model.weight, 2.0)
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.flush()
        f.truncate(f.tell() // 2)  # half the bytes are on disk
        os.kill(os.getpid(), signal.SIGKILL)

    real_replace = os.replace

    def dying_replace(src, dst):
        if os.path.basename(dst) == "last_checkpoint":  # the new model file is in place already
            with open(src, "r+") as f:
                f.truncate(3)
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)

    if stage == "model":
        torch.save = dying_save
        checkpointer.save("model_final")
    else:
        os.replace = dying_replace
        checkpointer.save("model_0000001")
    """
)


@pytest.mark.parametrize("stage", ["model", "tag"])
def test_a_kill_during_a_save_keeps_the_previous_checkpoint(tmp_path, stage):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(out), stage], capture_output=True, text=True
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    model = torch.nn.Linear(64, 64)
    checkpointer = CondConvCheckpointer(model, str(out))
    assert checkpointer.has_checkpoint()
    checkpointer.resume_or_load("", resume=True)
    assert torch.equal(model.weight, torch.ones(64, 64))  # the first save, whole
    leftovers = [p.name for p in out.iterdir() if ".tmp-" in p.name]
    assert stage == "tag" or leftovers  # the cut-short temporary, never under the real name


def test_saves_replace_the_file_whole(tmp_path):
    model = torch.nn.Linear(4, 4)
    checkpointer = CondConvCheckpointer(model, str(tmp_path))
    for value in (1.0, 2.0):
        torch.nn.init.constant_(model.weight, value)
        checkpointer.save("model_final", iteration=int(value))
    loaded = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    assert loaded["iteration"] == 2 and torch.equal(
        loaded["model"]["weight"], torch.full((4, 4), 2.0)
    )
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]
