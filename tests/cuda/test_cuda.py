"""The layer and the detectors on a CUDA device: every path of the layer against the plain
reference, gradients against the CPU, the narrow expert stores, autocast, and tools/train_net.py
training and evaluating the shapes SSD on the GPU (float32 and AMP) with its checkpoint loading
on the CPU. Skipped where torch sees no CUDA device."""

import copy
import os

import pytest
import torch

from condconv_det.benchmarking.layer import without_tf32
from condconv_det.layers import CONDCONV_PATHS, CondConv2d, RoutedCondConv2d, store_experts_in

from ..layers.reference import condconv_reference
from ..tools import load_tool, small_shapes

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

GROUPS = {1: (8, 6, 1), 2: (8, 6, 2), "dw": (8, 8, 8)}


@pytest.fixture(autouse=True)
def exact_float32():
    """TensorFloat-32 off: the comparisons below are float32 against float32."""
    with without_tf32():
        yield


def _layer(groups_key, path, **kwargs):
    torch.manual_seed(0)
    cin, cout, groups = GROUPS[groups_key]
    return CondConv2d(cin, cout, 3, padding=1, groups=groups, num_experts=4, path=path, **kwargs)


@pytest.mark.parametrize("path", CONDCONV_PATHS)
@pytest.mark.parametrize("groups_key", list(GROUPS), ids=lambda g: f"groups{g}")
@pytest.mark.parametrize("batch", [0, 1, 3])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_every_path_matches_the_reference(path, groups_key, batch, bias):
    if path == "single" and batch != 1:
        pytest.skip("path 'single' takes a batch of one")
    layer = _layer(groups_key, path, bias=bias).cuda()
    # The reference takes one example for an empty batch: its output's shape, sliced to none.
    x = torch.randn(max(batch, 1), layer.in_channels, 9, 7, device="cuda")
    r = torch.rand(max(batch, 1), 4, device="cuda")
    got = layer(x[:batch], r[:batch])
    want = condconv_reference(
        x.double().cpu(),
        r.double().cpu(),
        layer.weight.double().cpu(),
        None if layer.bias is None else layer.bias.double().cpu(),
        layer.stride,
        layer.padding,
        layer.dilation,
        layer.groups,
    )[:batch]
    assert got.device.type == "cuda" and got.dtype == torch.float32
    torch.testing.assert_close(got.double().cpu(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", CONDCONV_PATHS)
@pytest.mark.parametrize("groups_key", list(GROUPS), ids=lambda g: f"groups{g}")
def test_gradients_match_the_cpu(path, groups_key):
    torch.manual_seed(1)
    cin, cout, groups = GROUPS[groups_key]
    cpu = RoutedCondConv2d(cin, cout, 3, padding=1, groups=groups, num_experts=4, path=path)
    gpu = copy.deepcopy(cpu).cuda()
    batch = 1 if path == "single" else 3
    x = torch.randn(batch, cin, 10, 8)
    x_gpu = x.cuda().requires_grad_()
    x.requires_grad_()
    grad_out = torch.randn(batch, cout, 10, 8)
    cpu(x).backward(grad_out)
    gpu(x_gpu).backward(grad_out.cuda())
    torch.testing.assert_close(x_gpu.grad.cpu(), x.grad, rtol=1e-4, atol=1e-5)
    for (name, p_cpu), p_gpu in zip(cpu.named_parameters(), gpu.parameters()):
        assert p_gpu.grad is not None, name
        torch.testing.assert_close(p_gpu.grad.cpu(), p_cpu.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.int8], ids=["bfloat16", "int8"])
@pytest.mark.parametrize("path", CONDCONV_PATHS)
@pytest.mark.parametrize("batch", [1, 3])
def test_narrow_experts_compute_on_the_gpu_what_they_compute_on_the_cpu(dtype, path, batch):
    if path == "single" and batch != 1:
        pytest.skip("path 'single' takes a batch of one")
    cpu = store_experts_in(_layer(1, path).eval(), dtype)
    gpu = copy.deepcopy(cpu).cuda()
    assert gpu.weight.dtype == dtype and gpu.weight.device.type == "cuda"
    x = torch.randn(batch, 8, 9, 7)
    r = torch.rand(batch, 4)
    with torch.no_grad():
        want = cpu(x, r)
        got = gpu(x.cuda(), r.cuda())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_autocast_trains(dtype):
    torch.manual_seed(2)
    layer = RoutedCondConv2d(16, 32, 3, padding=1, num_experts=4).cuda()
    x = torch.randn(4, 16, 12, 12, device="cuda")
    want = layer(x)
    with torch.autocast("cuda", dtype=dtype):
        got = layer(x)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2 * want.abs().max().item())
    got.float().square().mean().backward()
    grads = [p.grad for p in layer.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


SMALL = [
    "MODEL.MOBILENET.WIDTH_MULT", 0.35,
    "MODEL.CONDCONV.NUM_EXPERTS", 4,
    "INPUT.SSD.SIZE", 128,
    "INPUT.SSD.PHOTOMETRIC", False,
    "INPUT.SSD.EXPAND", False,
    "INPUT.SSD.MIN_IOU_CROP", False,
    "DATASETS.TEST", ("shapes_plain_train",),
    "DATALOADER.NUM_WORKERS", 2,
    "SOLVER.IMS_PER_BATCH", 8,
    "SOLVER.BASE_LR", 0.05,
    "SOLVER.WARMUP_ITERS", 20,
    "SOLVER.MAX_ITER", 200,
    "SOLVER.CHECKPOINT_PERIOD", 1000,
    "SEED", 0,
]  # fmt: skip
CONFIG = os.path.join(
    os.path.dirname(__file__), "..", "..", "configs", "shapes", "ssd_condconv_MNv1.yaml"
)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    with small_shapes(tmp_path_factory.mktemp("shapes")) as root:
        yield root


@pytest.mark.parametrize("amp", [False, True], ids=["float32", "amp"])
def test_train_net_trains_on_the_gpu_and_the_checkpoint_evaluates_on_the_cpu(shapes, tmp_path, amp):
    train_net = load_tool("train_net")
    out = str(tmp_path / "out")

    def run(*extra, flags=()):
        args = [*flags, "--config-file", CONFIG, *map(str, SMALL), "OUTPUT_DIR", out]
        args += list(map(str, extra))
        return train_net.main(train_net.argument_parser().parse_args(args))["bbox"]

    from condconv_det.engine import Trainer

    trained = run("MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", amp)
    args = ["--config-file", CONFIG, *map(str, SMALL), "OUTPUT_DIR", str(tmp_path / "untrained")]
    cfg = train_net.setup(train_net.argument_parser().parse_args(args + ["MODEL.DEVICE", "cuda"]))
    untrained = Trainer.test(cfg, Trainer.build_model(cfg))["bbox"]
    # From scratch CondConv learns 16 images slowly (AP50 12-17 after 200 CPU iterations, seeds
    # 0-1); an untrained model finds nothing.
    assert trained["AP50"] > untrained["AP50"] + 5, (trained, untrained)
    weights = os.path.join(out, "model_final.pth")
    on_gpu = run("MODEL.DEVICE", "cuda", "MODEL.WEIGHTS", weights, flags=["--eval-only"])
    on_cpu = run("MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", weights, flags=["--eval-only"])
    assert on_gpu["AP"] == pytest.approx(trained["AP"], abs=0.05)
    # Another device sums in another order: a box may cross a threshold, no more.
    assert on_cpu["AP"] == pytest.approx(on_gpu["AP"], abs=1.0)
