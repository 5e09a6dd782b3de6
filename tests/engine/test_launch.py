"""Two CPU processes (gloo) train a CondConv detector with DDP and end with identical weights."""

import os
import pathlib

import torch
from detectron2.utils import comm

from condconv_det.engine import Trainer, launch

from .test_trainer import tiny_cfg


def _train(tmp_path: pathlib.Path) -> None:
    cfg = tiny_cfg(tmp_path, tag="ddp", max_iter=3, generate=False)
    trainer = Trainer(cfg)
    assert isinstance(trainer.model, torch.nn.parallel.DistributedDataParallel)
    trainer.resume_or_load(resume=False)
    start = {k: v.detach().clone() for k, v in trainer.model.module.named_parameters()}
    trainer.train()
    params = {k: v.detach().clone() for k, v in trainer.model.module.named_parameters()}
    torch.save({"start": start, "end": params}, tmp_path / f"rank{comm.get_rank()}.pt")


def test_two_cpu_processes_train_in_sync(tmp_path):
    tiny_cfg(tmp_path, tag="ddp")  # writes the fake dataset once, before the workers start
    launch(_train, 2, dist_url="auto", args=(tmp_path,))
    saved = torch.load(tmp_path / "rank0.pt")
    start, rank0 = saved["start"], saved["end"]
    rank1 = torch.load(tmp_path / "rank1.pt")["end"]
    experts = [n for n, v in rank0.items() if v.dim() == 5]  # CondConv weights: (E, O, I, kh, kw)
    assert rank0.keys() == rank1.keys() and experts
    for name, value in rank0.items():
        assert torch.equal(value, rank1[name]), name
    # The processes did train (weights moved) and wrote their final checkpoint once.
    assert all(not torch.equal(start[n], rank0[n]) for n in experts)
    assert os.path.isfile(tmp_path / "out" / "model_final.pth")
