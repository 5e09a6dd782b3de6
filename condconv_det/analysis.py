"""Parameters and multiply-adds of (CondConv) models, counted as the CondConv paper does.

Multiply-adds come from fvcore's jit-trace counter (one fused multiply-add = one flop) over
convolutions, linear layers and matrix products. For a CondConv layer that is, per example:
the routing FC, the kernel mix (``E x`` the kernel's size) and the convolution with the mixed
kernel. Batch norms (folded into the convs at inference) and element-wise ops are not counted.
detectron2 0.6's ``utils.analysis`` imports caffe2, so fvcore is used directly.
"""

from typing import Dict, List, Tuple

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape, matmul_flop_jit
from torch import nn

from condconv_det.layers import CondConv2d

__all__ = [
    "madds_analysis",
    "count_parameters",
    "expert_parameters",
    "DetectorAdapter",
    "eval_image_size",
    "analyze_detector",
]


def madds_analysis(model: nn.Module, inputs: Tuple) -> FlopCountAnalysis:
    """fvcore FlopCountAnalysis of ``model(*inputs)`` with CondConv's ops counted.

    ``.total()`` is the number of multiply-adds; ``.by_module()`` breaks it down.
    """
    analysis = FlopCountAnalysis(model, inputs)
    # The kernel mix is a plain matrix product, which fvcore does not count by default; a
    # CondConv layer with a bias applies its kernels with baddbmm, which it does not know.
    analysis.set_op_handle("aten::mm", matmul_flop_jit)
    analysis.set_op_handle("aten::baddbmm", _baddbmm_madds)
    # Batch norms fold into the convolutions at inference; a handle of None would not replace
    # fvcore's default one, so count them as zero explicitly.
    analysis.set_op_handle("aten::batch_norm", lambda inputs, outputs: 0)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return analysis


def _baddbmm_madds(inputs, outputs) -> int:
    """``baddbmm(bias, a, b)``: the batched product's multiply-adds; the bias added to its
    result is element-wise, not counted."""
    (batch, rows, inner), (_, _, cols) = get_shape(inputs[1]), get_shape(inputs[2])
    return batch * rows * inner * cols


def expert_parameters(model: nn.Module) -> List[nn.Parameter]:
    """The expert weights and biases of every :class:`~condconv_det.layers.CondConv2d` in
    ``model`` (subclasses included), each once: the ``(E, ...)`` tensors that the kernel mix
    reads. A static kernel beside the experts (``static_weight``) is not an expert."""
    params: Dict[int, nn.Parameter] = {}
    for module in model.modules():
        if isinstance(module, CondConv2d):
            for param in (module.weight, module.bias):
                if param is not None:
                    params.setdefault(id(param), param)
    return list(params.values())


def count_parameters(model: nn.Module) -> Dict[str, int]:
    """``total`` parameters and ``experts``: those in CondConv expert weights and biases."""
    total = sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for p in expert_parameters(model))
    return {"total": total, "experts": experts}


class DetectorAdapter(nn.Module):
    """Tensor in, tensors out: what fvcore's tracer needs from a detectron2 detector."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        (result,) = self.model([{"image": image}])
        if "instances" in result:
            inst = result["instances"]
            return inst.pred_boxes.tensor, inst.scores, inst.pred_classes
        return tuple(result.values())


def eval_image_size(cfg) -> Tuple[int, int]:
    """(height, width) a detector of ``cfg`` is counted at: SSD's square, else the test size
    (short side ``INPUT.MIN_SIZE_TEST``, square like the papers' per-image figures)."""
    if cfg.MODEL.META_ARCHITECTURE == "SSD":
        return cfg.INPUT.SSD.SIZE, cfg.INPUT.SSD.SIZE
    return cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST


def analyze_detector(cfg, size: Tuple[int, int] = None) -> Tuple[nn.Module, FlopCountAnalysis]:
    """Builds ``cfg``'s model on the CPU and counts one image of ``size`` (default: its test
    size)."""
    from detectron2.modeling import build_model

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).eval()
    height, width = size or eval_image_size(cfg)
    # Random pixels: zeros would give no detections, and the counted graph would then skip
    # the box decoding that real images go through.
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(0)) * 255
    return model, madds_analysis(DetectorAdapter(model), (image,))
