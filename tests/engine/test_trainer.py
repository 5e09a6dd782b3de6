"""The Trainer of tools/train_net.py: optimizer and LR schedule survive --resume, data errors
name files."""

import os

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from condconv_det.config import get_cfg
from condconv_det.engine import Trainer
from condconv_det.engine.trainer import check_datasets, check_weights

from .fake_coco import make_fake_coco


def _register(root, tag, generate=True):
    if generate:
        make_fake_coco(root, num_train=4, num_val=2)
    names = {}
    for split in ("train2017", "val2017"):
        name = f"fake_coco_{tag}_{split}"
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        json_file = os.path.join(root, "coco", "annotations", f"instances_{split}.json")
        register_coco_instances(name, {}, json_file, os.path.join(root, "coco", split))
        names[split] = name
    return names


def tiny_cfg(tmp_path, tag="t", max_iter=4, generate=True, **overrides):
    """A RetinaNet with a tiny CondConv-MobileNetV2-FPN on a fake COCO of 4 + 2 images."""
    names = _register(str(tmp_path / "data"), tag, generate)
    cfg = get_cfg()
    cfg.merge_from_file(
        os.path.join(
            os.path.dirname(__file__),
            "../../configs/COCO-Detection/retinanet_condconv_MNv2_FPN_1x.yaml",
        )
    )
    cfg.merge_from_list(
        [
            "DATASETS.TRAIN",
            (names["train2017"],),
            "DATASETS.TEST",
            (names["val2017"],),
            "MODEL.DEVICE",
            "cpu",
            "MODEL.WEIGHTS",
            "",
            "MODEL.CONDCONV.NUM_EXPERTS",
            2,
            "MODEL.MOBILENET.WIDTH_MULT",
            0.25,
            "MODEL.MOBILENET.NORM",
            "BN",
            "MODEL.RETINANET.NUM_CLASSES",
            80,
            "INPUT.MIN_SIZE_TRAIN",
            (64,),
            "INPUT.MAX_SIZE_TRAIN",
            96,
            "INPUT.MIN_SIZE_TEST",
            64,
            "INPUT.MAX_SIZE_TEST",
            96,
            "DATALOADER.NUM_WORKERS",
            0,
            "SOLVER.IMS_PER_BATCH",
            2,
            "SOLVER.BASE_LR",
            0.01,
            "SOLVER.MAX_ITER",
            max_iter,
            "SOLVER.STEPS",
            (2,),
            "SOLVER.WARMUP_ITERS",
            1,
            "SOLVER.CHECKPOINT_PERIOD",
            2,
            "TEST.EVAL_PERIOD",
            0,
            "OUTPUT_DIR",
            str(tmp_path / "out"),
        ]
    )
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    return cfg


def test_resume_restores_optimizer_and_schedule(tmp_path):
    cfg = tiny_cfg(tmp_path, max_iter=4)
    first = Trainer(cfg)
    first.resume_or_load(resume=False)
    first.train()
    saved = torch.load(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), weights_only=False)
    state = saved["trainer"]
    assert state["iteration"] == 3
    # detectron2 0.6 keeps the optimizer beside the hooks; main, in the inner trainer's state.
    optimizer_state = state["_trainer"]["optimizer"] if "_trainer" in state else state["optimizer"]
    momentum = [s["momentum_buffer"] for s in optimizer_state["state"].values()]
    assert momentum and any(m.abs().sum() > 0 for m in momentum), "momentum was not saved"
    saved_sched = next(iter(state["hooks"].values()))

    cfg.defrost()
    cfg.SOLVER.MAX_ITER = 6
    second = Trainer(cfg)
    fresh = second.optimizer.state_dict()
    assert not fresh["state"], "a new optimizer has no momentum yet"
    second.resume_or_load(resume=True)
    assert second.start_iter == 4
    restored = second.optimizer.state_dict()
    assert restored["state"].keys() == optimizer_state["state"].keys()
    for key, value in optimizer_state["state"].items():
        torch.testing.assert_close(
            restored["state"][key]["momentum_buffer"], value["momentum_buffer"]
        )
    assert [g["lr"] for g in restored["param_groups"]] == [
        g["lr"] for g in optimizer_state["param_groups"]
    ]
    assert second.scheduler.state_dict()["last_epoch"] == saved_sched["last_epoch"] == 4
    # The LR has passed the step at iteration 2: it is BASE_LR * GAMMA after resuming.
    assert restored["param_groups"][0]["lr"] == pytest.approx(0.01 * cfg.SOLVER.GAMMA)
    second.train()
    final = torch.load(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), weights_only=False)
    assert final["trainer"]["iteration"] == 5


def test_bad_image_names_the_file(tmp_path):
    cfg = tiny_cfg(tmp_path, tag="bad")
    bad = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[0]["file_name"]
    with open(bad, "wb") as f:
        f.write(b"not an image")
    loader = Trainer.build_test_loader(cfg, cfg.DATASETS.TRAIN[0])
    with pytest.raises(Exception, match=os.path.basename(bad)):
        for _ in loader:
            pass


def test_missing_dataset_files_and_weights_are_named(tmp_path):
    with pytest.raises(KeyError, match="not registered"):
        check_datasets(["no_such_dataset_train"])
    register_coco_instances("missing_json_ds", {}, str(tmp_path / "nope.json"), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nope.json.*DETECTRON2_DATASETS"):
        check_datasets(["missing_json_ds"])
    with pytest.raises(ValueError, match="MODEL.WEIGHTS"):
        check_weights("", required=True)
    check_weights("", required=False)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        check_weights(str(tmp_path / "missing.pth"), required=False)


@pytest.mark.parametrize("classes", [79, 81])
def test_a_class_count_other_than_the_datasets_is_refused_before_training(tmp_path, classes):
    # One too few would train the last class as background; one too many would fail in the
    # evaluator after the whole training.
    cfg = tiny_cfg(tmp_path, tag=f"classes{classes}", **{"MODEL.RETINANET.NUM_CLASSES": classes})
    with pytest.raises(ValueError) as info:
        Trainer(cfg)
    message = str(info.value)
    assert f"MODEL.RETINANET.NUM_CLASSES is {classes}" in message and "has 80 classes" in message
    assert cfg.DATASETS.TRAIN[0] in message and "Set MODEL.RETINANET.NUM_CLASSES 80" in message
    assert not os.path.exists(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))


def test_one_image_per_batch_through_batch_norm_is_refused_by_name():
    from detectron2.modeling import build_model

    from condconv_det.engine.trainer import check_images_per_batch_norm

    cfg = get_cfg()
    cfg.merge_from_file(
        os.path.join(os.path.dirname(__file__), "../../configs/shapes/ssd_condconv_MNv1.yaml")
    )
    cfg.merge_from_list(
        ["MODEL.DEVICE", "cpu", "MODEL.MOBILENET.WIDTH_MULT", 0.25, "SOLVER.IMS_PER_BATCH", 1]
    )
    model = build_model(cfg)
    # What it guards against: BatchNorm in training on SSD's 1x1 maps with one image.
    model.train()
    last = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)][-1]
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        last(torch.randn(1, last.num_features, 1, 1))
    with pytest.raises(ValueError) as info:
        check_images_per_batch_norm(cfg, model)
    assert "SOLVER.IMS_PER_BATCH 1" in str(info.value) and "MODEL.SSD.NORM" in str(info.value)
    cfg.SOLVER.IMS_PER_BATCH = 2
    check_images_per_batch_norm(cfg, model)
