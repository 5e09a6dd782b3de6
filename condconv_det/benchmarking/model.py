"""The model benchmark (``tools/benchmark_model.py``): CondConv models against their static twins,
built with random weights, in batch-1 latency, batch-8 throughput, a training step, the peak
memory of that step and multiply-adds.

Every ratio is CondConv's cost over the static twin's. The twins are timed round-robin and each
time ratio is the median of the per-round ratios (:func:`~.timing.paired_times`), so a slow
phase of a shared machine slows both twins of a round alike. Each time also has a floor
(:func:`model_floors`): the static twin's time plus the CondConv twin's expert bytes moved at
the read bandwidth measured in the same run (:mod:`.floor`).
"""

import os
import platform
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn

from condconv_det.layers import store_experts_in

from .floor import EVAL_EXPERT_PASSES, TRAIN_EXPERT_PASSES, expert_bytes, floor_seconds
from .memory import model_state_bytes, peak_memory
from .timing import paired_times, sync

__all__ = [
    "COLUMNS",
    "COMPILED_COLUMNS",
    "PAIRS",
    "PROGRESS_STEPS",
    "QUICK_EXPERTS",
    "QUICK_SIZE",
    "TARGETS",
    "WHOLE_COMPILED_COLUMNS",
    "Bench",
    "CompiledTiming",
    "ModelFloors",
    "ModelBenchmarkOptions",
    "Pair",
    "Result",
    "Timing",
    "benchmark_pair",
    "build_bench",
    "build_classifier_bench",
    "build_detector_bench",
    "compile_model",
    "machine_name",
    "model_floors",
    "profile_pair",
    "table_row",
    "time_compiled_whole",
    "time_twins",
    "to_channels_last",
]

# Targets for CondConv over static (CPU, 2 threads, float32).
TARGETS = {"latency": 1.15, "train": 1.6, "memory": 1.5}


class Pair(NamedTuple):
    """A static model and its CondConv twin.

    ``static`` and ``condconv`` are config names under configs/COCO-Detection, or for the
    classifier ``"classifier:<arch>:<experts>"``. ``quick`` are KEY VALUE overrides that shrink
    both twins of a detector pair for ``--quick`` (a classifier gets ``width_mult=0.25``).
    """

    name: str
    static: str
    condconv: str
    size: int  # input height = width
    quick: Tuple[str, ...]


_MOBILENET_QUICK = ("MODEL.MOBILENET.WIDTH_MULT", "0.25")
_SSD_QUICK = _MOBILENET_QUICK + ("MODEL.SSD.EXTRA_CHANNELS", "[32, 16, 16, 16]")
_RETINANET_QUICK = ("MODEL.FPN.OUT_CHANNELS", "32", "MODEL.RETINANET.NUM_CONVS", "1")
PAIRS = {
    p.name: p
    for p in [
        Pair("ssd300_MNv1", "ssd300_static_MNv1", "ssd300_condconv_MNv1", 300, _SSD_QUICK),
        Pair(
            "ssdlite320_MNv2", "ssdlite320_static_MNv2", "ssdlite320_condconv_MNv2", 320, _SSD_QUICK
        ),
        Pair(
            "retinanet_MNv2_FPN",
            "retinanet_static_MNv2_FPN_1x",
            "retinanet_condconv_MNv2_FPN_1x",
            512,
            _RETINANET_QUICK + _MOBILENET_QUICK,
        ),
        Pair(
            "retinanet_R_50_FPN",
            "retinanet_static_R_50_FPN_1x",
            "retinanet_condconv_R_50_FPN_1x",
            512,
            _RETINANET_QUICK
            + ("MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"),
        ),
        Pair(
            "efficientnet_b0",
            "classifier:efficientnet_b0:0",
            "classifier:efficientnet_b0:8",
            224,
            (),
        ),
    ]
}
QUICK_SIZE = 64
QUICK_EXPERTS = 2


@dataclass(frozen=True)
class ModelBenchmarkOptions:
    """How the twins are built and measured; the defaults are ``tools/benchmark_model.py``'s.

    Attributes:
        configs_dir (str): the folder of the detector pairs' configs, ``<name>.yaml``.
        quick (bool): tiny models at ``QUICK_SIZE`` with at most ``QUICK_EXPERTS`` experts, one
            timed round.
        reps (int): batch-1 rounds; a fifth of them, at least 3, at batch 8 and in training.
        budget (float): seconds after which a measurement stops at 2 rounds.
        train_batch (int): images per training step.
        inference_mode (bool): eval under ``torch.inference_mode`` instead of ``no_grad``.
        with_postprocess (bool): time detectors with box decoding and NMS.
        channels_last (bool): 4-d kernels, and so the activations, in channels-last order.
        compile (bool): also time ``torch.compile``'d networks against each other.
        compile_detector (bool): also time each twin's whole model compiled against eager.
        compile_backend (str): the ``torch.compile`` backend of both.
        expert_dtype (str): "float32", or "bfloat16" or "int8": the CondConv twin's experts
            stored so (``store_experts_in``) for batch-1 latency and batch-8 throughput, whose
            floors then count those bytes; the training rows train float32 experts as ever.
    """

    configs_dir: str
    quick: bool = False
    reps: int = 15
    budget: float = 90.0
    train_batch: int = 2
    inference_mode: bool = False
    with_postprocess: bool = False
    channels_last: bool = False
    compile: bool = False
    compile_detector: bool = False
    compile_backend: str = "inductor"
    expert_dtype: str = "float32"


# ---------------------------------------------------------------------------------------------
# Models and inputs


class Bench(NamedTuple):
    """One model with what it takes to run it."""

    model: nn.Module
    infer: Callable[[int], Callable[[], object]]  # batch size -> one inference forward
    train_loss: Callable[[], torch.Tensor]  # one forward in train mode -> scalar loss
    madds: float  # multiply-adds of one image
    whole_inputs: tuple  # model(*whole_inputs): the whole model's batch-1 inference


def _random_images(batch: int, size: int, seed: int, device: torch.device) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(3, size, size, generator=g) * 255).to(device) for _ in range(batch)]


def _random_instances(num_classes: int, size: int, seed: int, device: torch.device):
    """3 to 8 boxes of 8 to 40% of the image side, anywhere in it."""
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(3, 9, (1,), generator=g))
    wh = (0.08 + 0.32 * torch.rand(n, 2, generator=g)) * size
    xy = torch.rand(n, 2, generator=g) * (size - wh)
    inst = Instances((size, size))
    inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1).to(device))
    inst.gt_classes = torch.randint(0, num_classes, (n,), generator=g).to(device)
    return inst


def build_detector_bench(
    config_file: str,
    opts: Sequence[str],
    size: int,
    train_batch: int,
    device: torch.device,
    postprocess: bool,
) -> Bench:
    """The detector of ``config_file`` with ``opts`` (KEY VALUE overrides), random weights.

    Inference runs the network (normalisation, padding, backbone, head) without decoding and
    NMS unless ``postprocess``: with random weights every default box scores about 1/K in
    every class, and the per-class NMS over thousands of such boxes (a quarter of SSDLite's
    batch-1 time) measures nothing a trained model does, identically in both twins.
    """
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from condconv_det.analysis import DetectorAdapter, madds_analysis
    from condconv_det.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        madds = madds_analysis(
            DetectorAdapter(model), (_random_images(1, size, 0, torch.device("cpu"))[0],)
        )
        madds = madds.total()
    model.to(device)
    if cfg.MODEL.META_ARCHITECTURE == "SSD":
        num_classes = cfg.MODEL.SSD.NUM_CLASSES
    else:
        num_classes = cfg.MODEL.RETINANET.NUM_CLASSES

    images = {b: _random_images(b, size, 1, device) for b in (1, 8)}
    train_inputs = [
        {"image": image, "instances": _random_instances(num_classes, size, 100 + i, device)}
        for i, image in enumerate(_random_images(train_batch, size, 2, device))
    ]

    def infer(batch: int) -> Callable[[], object]:
        if batch not in images:
            images[batch] = _random_images(batch, size, 1, device)
        inputs = [{"image": image} for image in images[batch]]
        if postprocess:
            return lambda: model(inputs)

        def network():
            # DenseDetector.forward up to the predictions.
            batched = model.preprocess_image(inputs)
            features = model.backbone(batched.tensor)
            return model.head([features[f] for f in model.head_in_features])

        return network

    def train_loss() -> torch.Tensor:
        # detectron2's detectors log to the current EventStorage in training.
        with EventStorage(0):
            return sum(model(train_inputs).values())

    return Bench(model, infer, train_loss, madds, ([{"image": images[1][0]}],))


def build_classifier_bench(
    spec: str, quick: bool, size: int, train_batch: int, device: torch.device
) -> Bench:
    """``classifier:<arch>:<experts>`` of condconv_det.modeling.classifier, random weights."""
    from condconv_det.analysis import madds_analysis
    from condconv_det.modeling.classifier import build_classifier

    _, arch, experts = spec.split(":")
    experts = int(experts)
    kwargs = {}
    if quick:
        experts = min(experts, QUICK_EXPERTS)
        kwargs["width_mult"] = 0.25
    torch.manual_seed(0)
    model = build_classifier(arch, num_experts=experts, **kwargs).eval()
    with torch.no_grad():
        madds = madds_analysis(model, (torch.zeros(1, 3, size, size),)).total()
    model.to(device)
    g = torch.Generator().manual_seed(1)
    images = {b: torch.randn(b, 3, size, size, generator=g).to(device) for b in (1, 8)}
    train_images = torch.randn(train_batch, 3, size, size, generator=g).to(device)
    labels = torch.randint(0, 1000, (train_batch,), generator=g).to(device)

    def infer(batch: int) -> Callable[[], object]:
        if batch not in images:
            images[batch] = torch.randn(batch, 3, size, size, generator=g).to(device)
        return lambda: model(images[batch])

    def train_loss() -> torch.Tensor:
        return nn.functional.cross_entropy(model(train_images), labels)

    return Bench(model, infer, train_loss, madds, (images[1],))


def build_bench(
    pair: Pair, which: str, options: ModelBenchmarkOptions, device: torch.device
) -> Bench:
    """The ``which`` ("static" or "condconv") model of ``pair``, at the run's sizes."""
    spec = getattr(pair, which)
    size = QUICK_SIZE if options.quick else pair.size
    if spec.startswith("classifier:"):
        bench = build_classifier_bench(spec, options.quick, size, options.train_batch, device)
    else:
        opts: List[str] = list(pair.quick) if options.quick else []
        if options.quick and which == "condconv":
            opts += ["MODEL.CONDCONV.NUM_EXPERTS", str(QUICK_EXPERTS)]
        config_file = os.path.join(options.configs_dir, spec + ".yaml")
        bench = build_detector_bench(
            config_file, opts, size, options.train_batch, device, options.with_postprocess
        )
    if options.channels_last:
        to_channels_last(bench.model)
    return bench


def to_channels_last(model: nn.Module) -> None:
    """Puts every 4-d parameter in channels-last memory order.

    ``Module.to(memory_format=...)`` would also convert 5-d tensors, and CondConv's stacked
    experts ``(E, out, in, kh, kw)`` have no channels-last order; a convolution whose input or
    weight is channels-last returns channels-last, so converting the static kernels (the stem's
    first of all) carries the format through the network.
    """
    for param in model.parameters():
        if param.dim() == 4:
            param.data = param.data.contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------------------
# Measuring


class Timing(NamedTuple):
    """Seconds per call of two twins and the CondConv/static ratio."""

    static: float  # median seconds per call
    condconv: float
    ratio: float  # median over rounds of condconv / static within the round


def time_twins(
    fns: Dict[str, Callable[[], object]],
    device: torch.device,
    reps: int,
    warmup: int = 1,
    budget: float = float("inf"),
) -> Timing:
    """Times the ``"static"`` and ``"condconv"`` functions round-robin (:func:`paired_times`)."""
    return Timing(*paired_times(fns["static"], fns["condconv"], device, reps, warmup, budget))


def _grad_context(inference_mode: bool):
    return torch.inference_mode() if inference_mode else torch.no_grad()


def compile_model(bench: Bench, backend: str) -> None:
    """torch.compile's the network: the backbone of a detector (detectron2's pre- and
    post-processing work on lists and Instances, which would only break the graph), the whole
    classifier."""
    model = bench.model
    if hasattr(model, "backbone") and hasattr(model, "pixel_mean"):
        model.backbone.forward = torch.compile(
            model.backbone.forward, backend=backend, dynamic=False
        )
    else:
        model.forward = torch.compile(model.forward, backend=backend, dynamic=False)


class CompiledTiming(NamedTuple):
    """Seconds per batch-1 call of a whole model, eager and torch.compile'd."""

    eager: float  # median seconds per call
    compiled: float
    ratio: float  # median over rounds of compiled / eager within the round


def time_compiled_whole(
    bench: Bench, options: ModelBenchmarkOptions, device: torch.device, reps: int
) -> CompiledTiming:
    """The whole model's batch-1 inference (``model(*bench.whole_inputs)``: a detector from the
    list of dicts to its Instances) ``torch.compile``'d (a separate wrapper: the model itself
    stays eager) against eager, round-robin. The first compiled calls compile, untimed."""
    model = bench.model.eval()
    compiled = torch.compile(model, backend=options.compile_backend, dynamic=False)

    def call(fn: Callable) -> Callable[[], object]:
        def run():
            with _grad_context(options.inference_mode):
                fn(*bench.whole_inputs)

        return run

    return CompiledTiming(
        *paired_times(call(model), call(compiled), device, reps, 2, options.budget)
    )


class Result(NamedTuple):
    latency: Timing  # batch 1
    batch8: Timing  # seconds per batch of 8
    train: Timing  # one training step
    state: Dict[str, int]  # bytes of parameters and optimizer buffers, live at the step's start
    step: Dict[str, int]  # bytes: the step's peak above that (activations, gradients, temporaries)
    madds: Dict[str, float]  # multiply-adds of one image
    compiled_latency: Optional[Timing]
    compiled_batch8: Optional[Timing]
    whole_compiled: Optional[Dict[str, CompiledTiming]]  # by twin, with compile_detector
    expert_bytes: int = 0  # the CondConv twin's expert weights and biases (floor.expert_bytes)
    # The same at inference where they are stored otherwise (expert_dtype); None: expert_bytes.
    eval_expert_bytes: Optional[int] = None


class ModelFloors(NamedTuple):
    """The least seconds the CondConv twin can take per call (:func:`model_floors`)."""

    latency: float  # batch 1
    batch8: float  # per batch of 8
    train: float  # one training step


def model_floors(result: Result, bandwidth: float) -> ModelFloors:
    """The floors of a pair's CondConv twin: the static twin's measured time plus the experts'
    bytes moved beyond it, at ``bandwidth`` bytes per second.

    Inference moves the experts once per call at any batch size (``EVAL_EXPERT_PASSES``: the mix
    reads each expert once for all the batch's routing vectors). A training step with SGD and
    momentum moves them ``TRAIN_EXPERT_PASSES`` = 7 times: the forward's read, the gradient's
    write, the optimizer's reads of weight, gradient and momentum and its writes of weight and
    momentum.
    """
    stored = result.expert_bytes if result.eval_expert_bytes is None else result.eval_expert_bytes
    eval_bytes = EVAL_EXPERT_PASSES * stored
    return ModelFloors(
        floor_seconds(result.latency.static, eval_bytes, bandwidth),
        floor_seconds(result.batch8.static, eval_bytes, bandwidth),
        floor_seconds(result.train.static, TRAIN_EXPERT_PASSES * result.expert_bytes, bandwidth),
    )


# benchmark_pair's steps: build, latency, throughput, training step, memory, whole-model compile,
# compile.
PROGRESS_STEPS = 7


class _NoProgress:
    def set_postfix_str(self, text: str) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass


def benchmark_pair(
    pair: Pair, options: ModelBenchmarkOptions, device: torch.device, progress=None
) -> Result:
    """Builds both twins of ``pair`` and measures them.

    Args:
        progress: a tqdm progress bar (``set_postfix_str``, ``update``), advanced
            ``PROGRESS_STEPS`` steps; None for none.
    """
    progress = progress if progress is not None else _NoProgress()
    benches = {}
    for which in ("static", "condconv"):
        progress.set_postfix_str(f"{pair.name}: build {which}")
        benches[which] = build_bench(pair, which, options, device)
    progress.update()
    # Batch 1 is cheap: more rounds. Batch 8 and training steps take up to tens of seconds each
    # for RetinaNet at 512x512 on two cores: fewer, within a time budget.
    reps, few = (1, 1) if options.quick else (options.reps, max(3, options.reps // 5))
    warmup = 1 if options.quick else 2

    def eval_fn(bench: Bench, batch: int):
        forward = bench.infer(batch)

        def run():
            with _grad_context(options.inference_mode):
                forward()

        return run

    for bench in benches.values():
        bench.model.eval()
    eval_bytes = None
    if options.expert_dtype != "float32":
        store_experts_in(benches["condconv"].model, options.expert_dtype)
        eval_bytes = expert_bytes(benches["condconv"].model)
    progress.set_postfix_str(f"{pair.name}: batch-1 latency")
    latency = time_twins(
        {w: eval_fn(b, 1) for w, b in benches.items()}, device, reps, warmup, options.budget
    )
    progress.update()
    progress.set_postfix_str(f"{pair.name}: batch-8 throughput")
    batch8 = time_twins(
        {w: eval_fn(b, 8) for w, b in benches.items()}, device, few, 1, options.budget
    )
    progress.update()

    if options.expert_dtype != "float32":  # reduced-precision experts do not train: built anew
        benches["condconv"] = build_bench(pair, "condconv", options, device)
    steps, optimizers = {}, {}
    for which, bench in benches.items():
        bench.model.train()
        params = [p for p in bench.model.parameters() if p.requires_grad]
        # A small learning rate: random weights on random boxes stay finite over the steps.
        optimizers[which] = optimizer = torch.optim.SGD(
            params, lr=1e-5, momentum=0.9, weight_decay=4e-5
        )

        def step(bench=bench, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            bench.train_loss().backward()
            optimizer.step()

        steps[which] = step
    progress.set_postfix_str(f"{pair.name}: training step")
    train = time_twins(steps, device, few, 1, options.budget)
    progress.update()
    progress.set_postfix_str(f"{pair.name}: training memory")
    state, step_bytes = {}, {}
    for which, step in steps.items():
        optimizers[which].zero_grad(set_to_none=True)
        state[which] = model_state_bytes(benches[which].model, optimizers[which])
        step_bytes[which] = peak_memory(step, device)
    progress.update()

    whole_compiled = None
    if options.compile_detector:
        # Before compile, which compiles the networks in place.
        progress.set_postfix_str(f"{pair.name}: torch.compile, whole model")
        whole_compiled = {
            w: time_compiled_whole(b, options, device, reps) for w, b in benches.items()
        }
    progress.update()

    compiled_latency = compiled_batch8 = None
    if options.compile:
        progress.set_postfix_str(f"{pair.name}: torch.compile")
        for bench in benches.values():
            bench.model.eval()
            compile_model(bench, options.compile_backend)
        # Two warm-up calls at each batch size: the first compiles for it.
        compiled_latency = time_twins(
            {w: eval_fn(b, 1) for w, b in benches.items()}, device, reps, 2, options.budget
        )
        compiled_batch8 = time_twins(
            {w: eval_fn(b, 8) for w, b in benches.items()}, device, few, 2, options.budget
        )
    progress.update()
    madds = {w: b.madds for w, b in benches.items()}
    return Result(
        latency,
        batch8,
        train,
        state,
        step_bytes,
        madds,
        compiled_latency,
        compiled_batch8,
        whole_compiled,
        expert_bytes(benches["condconv"].model),
        eval_bytes,
    )


def profile_pair(
    pair: Pair, options: ModelBenchmarkOptions, device: torch.device, top: int = 15
) -> Iterator[Tuple[str, str]]:
    """Where CondConv's extra time goes: the ``top`` ops by self time of a batch-1 inference and
    of a training step, for each twin.

    Yields:
        tuple[str, str]: a title and torch.profiler's table, for each twin's inference and then
        its training step, as each is profiled.
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for which in ("static", "condconv"):
        bench = build_bench(pair, which, options, device)
        forward = bench.infer(1)
        bench.model.eval()
        with _grad_context(options.inference_mode):
            for _ in range(2):
                forward()
            sync(device)
            with profile(activities=activities) as prof:
                for _ in range(3):
                    forward()
                sync(device)
        yield (
            f"{pair.name} {which}: batch-1 inference, 3 calls, top {top} ops by self time",
            prof.key_averages().table(sort_by=sort_by, row_limit=top),
        )
        bench.model.train()
        optimizer = torch.optim.SGD(
            [p for p in bench.model.parameters() if p.requires_grad], lr=1e-5
        )

        def step():
            optimizer.zero_grad(set_to_none=True)
            bench.train_loss().backward()
            optimizer.step()

        step()
        sync(device)
        with profile(activities=activities) as prof:
            step()
            sync(device)
        yield (
            f"{pair.name} {which}: training step (batch {options.train_batch}), "
            f"top {top} ops by self time",
            prof.key_averages().table(sort_by=sort_by, row_limit=top),
        )


# ---------------------------------------------------------------------------------------------
# Output


def machine_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _verdict(ratio: float, target: str) -> str:
    shown = round(ratio, 2)  # judged as printed, so that "1.15 (miss)" cannot appear
    return f"{shown:.2f} ({'pass' if shown <= TARGETS[target] else 'miss'})"


COLUMNS = [
    "model",
    "input",
    "MAdds x",
    "b1 ms S / C",
    "b1 x",
    "floor b1 x",
    "b1 x floor",
    "b8 img/s S / C",
    "b8 x",
    "floor b8 x",
    "b8 x floor",
    "train ms S / C",
    "train x",
    "floor train x",
    "train x floor",
    "peak MB S / C",
    "peak x",
    "state MB S / C",
    "step MB S / C",
    "step x",
]
COMPILED_COLUMNS = ["compiled b1 ms S / C", "compiled b1 x", "compiled b8 x"]
# compile_detector: each twin's whole model compiled against itself eager (not S against C).
WHOLE_COMPILED_COLUMNS = ["whole b1 ms S / C", "whole compiled b1 ms S / C", "compiled/eager S / C"]


def table_row(pair: Pair, size: int, r: Result, bandwidth: Optional[float] = None) -> List[str]:
    """One pair's cells, in the order of ``COLUMNS`` (+ ``COMPILED_COLUMNS``, +
    ``WHOLE_COMPILED_COLUMNS``).

    Args:
        bandwidth: bytes per second read (:func:`~.floor.read_bandwidth`) for the floors; None
            leaves the floor cells "-". ``floor <t> x`` is the floor over the static twin's
            time, ``<t> x floor`` the CondConv twin's time over the floor, computed as
            ``<t> x`` (the median of the per-round ratios) over ``floor <t> x``.
    """

    def both(static: float, condconv: float, fmt: str) -> str:
        return f"{fmt.format(static)} / {fmt.format(condconv)}"

    floor_cells = {name: ["-", "-"] for name in ("b1", "b8", "train")}
    if bandwidth is not None:
        timings = (r.latency, r.batch8, r.train)
        for name, timing, floor in zip(floor_cells, timings, model_floors(r, bandwidth)):
            over_static = floor / timing.static
            floor_cells[name] = [f"{over_static:.2f}", f"{timing.ratio / over_static:.2f}"]

    mb = 1 / 2**20
    peak = {w: r.state[w] + r.step[w] for w in ("static", "condconv")}
    row = [
        pair.name,
        f"{size}x{size}",
        f"{r.madds['condconv'] / r.madds['static']:.3f}",
        both(r.latency.static * 1e3, r.latency.condconv * 1e3, "{:.1f}"),
        _verdict(r.latency.ratio, "latency"),
        *floor_cells["b1"],
        both(8 / r.batch8.static, 8 / r.batch8.condconv, "{:.2f}"),
        f"{r.batch8.ratio:.2f}",
        *floor_cells["b8"],
        both(r.train.static * 1e3, r.train.condconv * 1e3, "{:.0f}"),
        _verdict(r.train.ratio, "train"),
        *floor_cells["train"],
        both(peak["static"] * mb, peak["condconv"] * mb, "{:.0f}"),
        _verdict(peak["condconv"] / peak["static"], "memory"),
        both(r.state["static"] * mb, r.state["condconv"] * mb, "{:.0f}"),
        both(r.step["static"] * mb, r.step["condconv"] * mb, "{:.0f}"),
        f"{r.step['condconv'] / r.step['static']:.2f}",
    ]
    if r.compiled_latency is not None:
        row += [
            both(r.compiled_latency.static * 1e3, r.compiled_latency.condconv * 1e3, "{:.1f}"),
            f"{r.compiled_latency.ratio:.2f}",
            f"{r.compiled_batch8.ratio:.2f}",
        ]
    if r.whole_compiled is not None:
        s, c = r.whole_compiled["static"], r.whole_compiled["condconv"]
        row += [
            both(s.eager * 1e3, c.eager * 1e3, "{:.1f}"),
            both(s.compiled * 1e3, c.compiled * 1e3, "{:.1f}"),
            both(s.ratio, c.ratio, "{:.2f}"),
        ]
    return row
