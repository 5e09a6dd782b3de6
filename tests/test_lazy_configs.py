"""The LazyConfig (.py) configs equal their YAML twins, and tools/lazy_train_net.py trains and
evaluates one.

Equal means: the same modules (parameter names, shapes, count), the same initialisation from the
same seed, the same outputs and losses once the weights are shared, the same data mapping, and
the same optimizer, schedule and training settings.
"""

import json
import math
import pathlib

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler, build_optimizer
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from condconv_det.config import get_cfg
from condconv_det.data import SSDDatasetMapper, register_shapes_plain
from condconv_det.layers import CondConv2d, CondConvRouter
from condconv_det.modeling.backbone import MobileNet, SSDBackbone, make_condconv_resnet_stages

from .tools import load_tool

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
# Every lazy config with a YAML twin of the same name.
TWINS = [
    "shapes/ssd_condconv_MNv1",
    "shapes/ssd_static_MNv1",
    "COCO-Detection/ssd300_condconv_MNv1",
    "COCO-Detection/retinanet_condconv_MNv2_FPN_1x",
    "COCO-Detection/retinanet_condconv_R_50_FPN_1x",
    "COCO-Detection/faster_rcnn_condconv_R_50_FPN_1x",
]
SHAPES = str(CONFIGS / "shapes" / "ssd_condconv_MNv1.py")


def _lazy(name: str):
    return LazyConfig.load(str(CONFIGS / f"{name}.py"))


def _yaml(name: str):
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIGS / f"{name}.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A small shapes dataset under shapes_plain_train / shapes_plain_val (16 + 4 images of
    128x128), the shapes configs' datasets."""
    root = tmp_path_factory.mktemp("shapes")
    register_shapes_plain(
        root, num_train=16, num_val=4, image_size=128, object_size=(20, 56), progress=False
    )
    yield root
    register_shapes_plain()  # back to the default registration


def test_the_twins_exist_and_every_lazy_config_is_one():
    lazy = sorted(str(p.relative_to(CONFIGS).with_suffix("")) for p in CONFIGS.rglob("*.py"))
    lazy = [p for p in lazy if not p.startswith("common")]
    assert lazy == sorted(TWINS)
    assert all((CONFIGS / f"{name}.yaml").is_file() for name in TWINS)


@pytest.mark.parametrize("name", TWINS)
def test_lazy_config_has_detectron2s_five_parts(name):
    cfg = _lazy(name)
    assert set(cfg) == {"model", "dataloader", "optimizer", "lr_multiplier", "train"}
    assert set(cfg.dataloader) == {"train", "test", "evaluator"}


# ---------------------------------------------------------------------------------------------
# Models


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Moves every float weight and buffer away from its initialisation (routers included, which
    the shapes configs start at zero), keeping variances positive.

    The noise varies over the first two dimensions (experts and output channels of a CondConv
    weight, output and input channels of a conv) and is shared by the rest, which keeps this
    fast on the 128M parameters of a CondConv-ResNet-50.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if not value.is_floating_point():
                continue
            shape = value.shape[:2] + (1,) * max(value.dim() - 2, 0)
            if key.endswith("running_var"):
                value.copy_(torch.rand(shape, generator=g) + 0.5)
            else:
                value.add_(torch.randn(shape, generator=g) * 0.05)


def _inputs(size, num_images: int):
    """Random images, each with two objects."""
    g = torch.Generator().manual_seed(0)
    inputs = []
    for _ in range(num_images):
        instances = Instances(size)
        instances.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 20.0, 90.0, 60.0]]))
        instances.gt_classes = torch.tensor([1, 3])
        inputs.append({"image": torch.rand(3, *size, generator=g) * 255, "instances": instances})
    return inputs


@pytest.mark.parametrize("name", TWINS)
def test_lazy_model_equals_its_yaml_twin(name):
    lazy_cfg, yaml_cfg = _lazy(name), _yaml(name)
    torch.manual_seed(0)
    ours = instantiate(lazy_cfg.model)
    torch.manual_seed(0)
    twin = build_model(yaml_cfg)

    ours_sd, twin_sd = ours.state_dict(), twin.state_dict()
    assert list(ours_sd) == list(twin_sd)
    assert {k: v.shape for k, v in ours_sd.items()} == {k: v.shape for k, v in twin_sd.items()}
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in twin.parameters())
    assert [n for n, p in ours.named_parameters() if p.requires_grad] == [
        n for n, p in twin.named_parameters() if p.requires_grad
    ]  # the same layers frozen
    has_condconv = any(isinstance(m, CondConv2d) for m in ours.modules())
    assert has_condconv == (yaml_cfg.MODEL.CONDCONV.NUM_EXPERTS > 0)
    # The same seed gives the same weights: the lazy configs build the modules in the order the
    # YAML builders do, with the same router initialisation.
    assert all(torch.equal(ours_sd[k], twin_sd[k]) for k in ours_sd)

    # Shared (perturbed) weights: the same features, detections and losses. (Untrained
    # RetinaNet and R-CNN heads score below their test thresholds: the losses check them.)
    _perturb(twin, seed=1)
    ours.load_state_dict(twin.state_dict())
    ours.eval()
    twin.eval()
    # SSD's batch norms train on its 1x1 levels only with more than one image; the 8-expert
    # ResNets stay fast with one.
    inputs = _inputs((96, 128), 2 if yaml_cfg.MODEL.META_ARCHITECTURE == "SSD" else 1)
    with torch.no_grad():
        images = twin.preprocess_image(inputs).tensor
        assert torch.equal(ours.preprocess_image(inputs).tensor, images)
        features, twin_features = ours.backbone(images), twin.backbone(images)
        assert list(features) == list(twin_features)
        for key in features:
            torch.testing.assert_close(features[key], twin_features[key], rtol=0, atol=0)
        detections, twin_detections = ours(inputs), twin(inputs)
    for ours_out, twin_out in zip(detections, twin_detections):
        a, b = ours_out["instances"], twin_out["instances"]
        assert len(a) == len(b)
        torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor, rtol=0, atol=0)
        torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=0)
        assert torch.equal(a.pred_classes, b.pred_classes)
    ours.train()
    twin.train()
    with EventStorage():
        torch.manual_seed(2)  # R-CNN samples proposals
        losses = ours(inputs)
        torch.manual_seed(2)
        twin_losses = twin(inputs)
    assert sorted(losses) == sorted(twin_losses)
    for key in losses:
        assert torch.isfinite(losses[key]) and torch.equal(losses[key], twin_losses[key]), key


# ---------------------------------------------------------------------------------------------
# Data


def _names(names):
    return [names] if isinstance(names, str) else list(names)


def _twin_mapper(yaml_cfg, is_train: bool):
    if yaml_cfg.MODEL.META_ARCHITECTURE == "SSD":
        return SSDDatasetMapper(yaml_cfg, is_train=is_train)
    return DatasetMapper(yaml_cfg, is_train=is_train)


@pytest.mark.parametrize("name", TWINS)
def test_lazy_data_equals_its_yaml_twin(name, shapes):
    lazy_cfg, yaml_cfg = _lazy(name), _yaml(name)
    train, test = lazy_cfg.dataloader.train, lazy_cfg.dataloader.test
    assert _names(train.dataset.names) == list(yaml_cfg.DATASETS.TRAIN)
    assert _names(test.dataset.names) == list(yaml_cfg.DATASETS.TEST)
    assert lazy_cfg.dataloader.evaluator.dataset_name == test.dataset.names
    assert train.total_batch_size == yaml_cfg.SOLVER.IMS_PER_BATCH
    assert train.num_workers == test.num_workers == yaml_cfg.DATALOADER.NUM_WORKERS
    assert train.get("aspect_ratio_grouping", True) == yaml_cfg.DATALOADER.ASPECT_RATIO_GROUPING

    # Each mapper maps an image as its twin does, random augmentations drawn from the same seed.
    records = DatasetCatalog.get("shapes_plain_train")[:3]
    for is_train, node in ((True, train.mapper), (False, test.mapper)):
        ours, twin = instantiate(node), _twin_mapper(yaml_cfg, is_train)
        assert [type(a) for a in ours.augmentations.augs] == [
            type(a) for a in twin.augmentations.augs
        ]
        for seed, record in enumerate(records):
            np.random.seed(seed)
            a = ours(record)
            np.random.seed(seed)
            b = twin(record)
            assert torch.equal(a["image"], b["image"])
            if is_train:
                assert torch.equal(a["instances"].gt_boxes.tensor, b["instances"].gt_boxes.tensor)
                assert torch.equal(a["instances"].gt_classes, b["instances"].gt_classes)


def test_the_shapes_loaders_batch_in_the_worker_and_give_the_grouped_loaders_batches(shapes):
    """Every shapes image is resized to one square size: both twins' train loaders batch in the
    worker (which then prefetches whole batches, where the grouped loader prefetches two
    images), and they yield the batches that the aspect-ratio grouped loader does."""
    from detectron2.utils.env import seed_all_rng

    from condconv_det.engine import Trainer

    yaml_cfg = _yaml("shapes/ssd_condconv_MNv1")
    lazy_cfg = _lazy("shapes/ssd_condconv_MNv1")
    batch = yaml_cfg.SOLVER.IMS_PER_BATCH
    for loader in (Trainer.build_train_loader(yaml_cfg), instantiate(lazy_cfg.dataloader.train)):
        assert isinstance(loader, torch.utils.data.DataLoader) and loader.batch_size == batch

    def batches(grouping):
        cfg = yaml_cfg.clone()
        cfg.DATALOADER.NUM_WORKERS = 0
        cfg.DATALOADER.ASPECT_RATIO_GROUPING = grouping
        seed_all_rng(0)
        loader = iter(Trainer.build_train_loader(cfg))
        return [next(loader) for _ in range(3)]  # 24 images of the 16: past one epoch

    grouped, batched = batches(True), batches(False)
    assert [len(b) for b in batched] == [batch] * 3
    for a, b in zip((x for b in grouped for x in b), (x for b in batched for x in b)):
        assert a["file_name"] == b["file_name"] and torch.equal(a["image"], b["image"])
        assert torch.equal(a["instances"].gt_boxes.tensor, b["instances"].gt_boxes.tensor)


# ---------------------------------------------------------------------------------------------
# Optimizer, schedule and training settings


@pytest.mark.parametrize("name", TWINS)
def test_lazy_solver_equals_its_yaml_twin(name):
    lazy_cfg, yaml_cfg = _lazy(name), _yaml(name)
    # A module with a conv, a bias and a norm: every parameter group of the default optimizer.
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    lazy_cfg.optimizer.params.model = module
    ours, twin = instantiate(lazy_cfg.optimizer), build_optimizer(yaml_cfg, module)
    assert type(ours) is type(twin)

    def groups(optimizer):
        keys = ("lr", "weight_decay", "momentum", "nesterov", "dampening")
        return [
            ([id(p) for p in g["params"]], {k: g[k] for k in keys}) for g in optimizer.param_groups
        ]

    assert groups(ours) == groups(twin)

    train = lazy_cfg.train
    assert train.max_iter == yaml_cfg.SOLVER.MAX_ITER
    assert train.checkpointer.period == yaml_cfg.SOLVER.CHECKPOINT_PERIOD
    assert train.eval_period == yaml_cfg.TEST.EVAL_PERIOD
    assert train.init_checkpoint == yaml_cfg.MODEL.WEIGHTS
    assert train.get("seed", -1) == yaml_cfg.SEED
    assert train.amp.enabled == yaml_cfg.SOLVER.AMP.ENABLED

    # The LR multiplier at every 1/50 of the schedule (and at the end of the warm-up).
    multiplier = instantiate(lazy_cfg.lr_multiplier)
    twin_scheduler = build_lr_scheduler(yaml_cfg, twin)
    warmup_end = yaml_cfg.SOLVER.WARMUP_ITERS
    for it in sorted({*range(0, train.max_iter, train.max_iter // 50), warmup_end - 1, warmup_end}):
        where = it / train.max_iter
        assert math.isclose(multiplier(where), twin_scheduler._multiplier(where), rel_tol=1e-9), it


# ---------------------------------------------------------------------------------------------
# Keyword path of the backbones


def test_router_init_keyword_reaches_every_router():
    def routers(module):
        return [m for m in module.modules() if isinstance(m, CondConvRouter)]

    bottom_up = MobileNet("tiny_v1", out_features=["res4", "res5"])
    ssd = SSDBackbone(
        bottom_up=bottom_up,
        in_features=["res5"],
        extra_channels=[16],
        num_experts=2,
        router_init="zeros",
    )
    assert len(routers(bottom_up)) > 0 and len(routers(ssd)) > len(routers(bottom_up))
    assert all(r.fc.weight.abs().sum() == 0 for r in routers(ssd))  # the bottom-up's too
    stages = make_condconv_resnet_stages(
        18, condconv_stages=["res4"], num_experts=2, res2_out_channels=64, router_init="zeros"
    )
    found = [r for stage in stages for block in stage for r in routers(block)]
    assert len(found) == 2 and all(r.fc.weight.abs().sum() == 0 for r in found)
    glorot = routers(MobileNet("tiny_v1", router_init="glorot"))
    assert glorot and all(r.fc.weight.abs().sum() > 0 for r in glorot)
    with pytest.raises(ValueError, match="router_init must be None or one of"):
        MobileNet("tiny_v1", router_init="normal")
    with pytest.raises(ValueError, match="router_init must be None or one of"):
        make_condconv_resnet_stages(18, router_init="normal")


def test_condconv_options_reach_the_ssd_extra_layers_and_predictors_as_in_yaml():
    # The YAML builders give MODEL.CONDCONV's options to every CondConv of an SSD; the lazy SSD
    # takes the backbone's condconv_options for its extra layers and predictors as well.
    def dropouts(model):
        parts = ("backbone.bottom_up.", "backbone.p6.", "head.")
        return {
            part: r.expert_dropout
            for n, r in model.named_modules()
            if isinstance(r, CondConvRouter)
            for part in parts
            if n.startswith(part)
        }

    lazy_cfg = _lazy("COCO-Detection/ssd300_condconv_MNv1")
    lazy_cfg.model.backbone.num_experts = 2
    lazy_cfg.model.head.num_experts = 2
    lazy_cfg.model.backbone.bottom_up.condconv_options = dict(expert_dropout=0.3)
    yaml_cfg = _yaml("COCO-Detection/ssd300_condconv_MNv1")
    yaml_cfg.merge_from_list(
        ["MODEL.SSD.EXTRA_NUM_EXPERTS", 2, "MODEL.SSD.HEAD_NUM_EXPERTS", 2]
        + ["MODEL.CONDCONV.EXPERT_DROPOUT", 0.3, "MODEL.MOBILENET.NORM", "BN"]
        + ["MODEL.SSD.NORM", "BN"]
    )
    lazy_cfg.model.backbone.bottom_up.norm = lazy_cfg.model.backbone.norm = "BN"
    expected = {"backbone.bottom_up.": 0.3, "backbone.p6.": 0.3, "head.": 0.3}
    assert dropouts(instantiate(lazy_cfg.model)) == expected
    assert dropouts(build_model(yaml_cfg)) == expected


# ---------------------------------------------------------------------------------------------
# tools/lazy_train_net.py

TINY = [
    "train.max_iter=3",
    "train.eval_period=0",
    "train.log_period=1",
    "train.checkpointer.period=1000",
    "dataloader.train.total_batch_size=2",
    "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0",
]


def _main(tool, *argv):
    return tool.main(tool.argument_parser().parse_args(["--config-file", SHAPES, *argv]))


def _last_metrics(output_dir: pathlib.Path) -> dict:
    rows = [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]
    return [row for row in rows if "total_loss" in row][-1]


def test_lazy_train_net_trains_as_train_net_does_then_eval_only_gives_the_same_ap(shapes, tmp_path):
    tool = load_tool("lazy_train_net")
    out = tmp_path / "out"
    # Without warm-up: the YAML's is in iterations, the lazy config's a fraction of max_iter.
    trained = _main(tool, *TINY, "lr_multiplier.warmup_length=0", f"train.output_dir={out}")["bbox"]

    # The same seed, model, data order, optimizer and schedule as tools/train_net.py with the
    # YAML twin: the same losses and AP.
    train_net = load_tool("train_net")
    yaml_out = tmp_path / "yaml"
    yaml_args = train_net.argument_parser().parse_args(
        ["--config-file", SHAPES.replace(".py", ".yaml"), "MODEL.DEVICE", "cpu"]
        + ["SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "0"]
        + ["DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(yaml_out)]
    )
    assert train_net.main(yaml_args)["bbox"] == pytest.approx(trained, abs=0, nan_ok=True)
    ours, twin = _last_metrics(out), _last_metrics(yaml_out)
    assert ours["iteration"] == twin["iteration"] == 2
    for key in ("total_loss", "loss_cls", "loss_box_reg", "lr"):
        assert ours[key] == twin[key], key

    assert (out / "model_final.pth").is_file()
    assert (out / "inference" / "coco_instances_results.json").is_file()
    assert {"AP", "AP50", "AP75"} <= set(trained) and 0 <= trained["AP50"] <= 100
    # The saved config reloads and builds the same model.
    saved = LazyConfig.load(str(out / "config.yaml"))
    assert saved.train.max_iter == 3 and saved.model.head.input_shape[0] == ShapeSpec(channels=128)

    evaluated = _main(
        tool,
        "--eval-only",
        *TINY,
        f"train.output_dir={out}",
        f"train.init_checkpoint={out / 'model_final.pth'}",
    )["bbox"]
    assert evaluated == pytest.approx(trained, abs=1e-6, nan_ok=True)

    # Nothing to evaluate (--resume in a folder without checkpoints) is an error, not an AP of
    # randomly initialised weights.
    with pytest.raises(ValueError, match="holds no checkpoint"):
        _main(tool, "--eval-only", "--resume", *TINY, f"train.output_dir={tmp_path / 'u'}")
    assert not (tmp_path / "u" / "inference").exists()
    checkpoint = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["iteration"] == 2 and "optimizer" in checkpoint["trainer"]


def test_lazy_train_net_logs_routing_statistics_when_asked(shapes, tmp_path):
    tool = load_tool("lazy_train_net")
    out = tmp_path / "out"
    _main(tool, *TINY, "train.routing_stats_period=1", f"train.output_dir={out}")
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    logged = [row for row in rows if "routing/mean_entropy" in row]
    assert [row["iteration"] for row in logged] == [0, 1, 2]
    assert all(0 < row["routing/mean_entropy"] <= math.log(8) + 1e-6 for row in logged)
    with pytest.raises(ValueError, match="train.routing_stats_period must be an int >= 0"):
        _main(tool, *TINY, "train.routing_stats_period=-1", f"train.output_dir={tmp_path / 'x'}")


def test_lazy_train_net_anneals_the_routing_temperature_as_train_net_does(shapes, tmp_path):
    tool = load_tool("lazy_train_net")
    out = tmp_path / "out"
    schedule = [
        "train.routing_temperature_schedule.start=5.0",
        "train.routing_temperature_schedule.iters=3",
    ]
    _main(tool, *TINY, *schedule, f"train.output_dir={out}")
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert [row["routing/temperature"] for row in rows if "routing/temperature" in row] == [
        5.0,
        3.0,
        1.0,
    ]
    # With the options on the model: a static kernel beside the experts, routers with a norm.
    options = "model.backbone.bottom_up.condconv_options={static_kernel:true,router_norm:LN}"
    _main(tool, *TINY, options, f"train.output_dir={tmp_path / 'o'}")
    weights = torch.load(
        tmp_path / "o" / "model_final.pth", map_location="cpu", weights_only=False
    )["model"]
    assert any(k.endswith("static_weight") for k in weights) and any(
        ".router.norm." in k for k in weights
    )
    for bad, message in (("iters=-1", "must be an int in"), ("length=3", "takes start and iters")):
        with pytest.raises(ValueError, match=message):
            _main(
                tool,
                *TINY,
                f"train.routing_temperature_schedule.{bad}",
                f"train.output_dir={tmp_path / 'x'}",
            )


def test_lazy_train_net_names_the_missing_checkpoint_and_the_wrong_config(shapes, tmp_path):
    tool = load_tool("lazy_train_net")
    with pytest.raises(ValueError, match="--eval-only needs the weights.*train.init_checkpoint"):
        _main(tool, "--eval-only", f"train.output_dir={tmp_path}")
    with pytest.raises(FileNotFoundError, match="train.init_checkpoint 'nope.pth' does not exist"):
        _main(tool, "--eval-only", f"train.output_dir={tmp_path}", "train.init_checkpoint=nope.pth")
    yaml_file = str(CONFIGS / "shapes" / "ssd_condconv_MNv1.yaml")
    args = tool.argument_parser().parse_args(["--config-file", yaml_file])
    with pytest.raises(SystemExit, match="tools/train_net.py"):
        tool.main(args)
