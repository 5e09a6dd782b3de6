"""Parameters and multiply-adds of (CondConv) models, counted as the CondConv paper does.

Multiply-adds come from fvcore's jit-trace counter (one fused multiply-add = one flop) over
convolutions, linear layers and matrix products. For a CondConv layer that is, per example:
the routing FC, the kernel mix (``E x`` the kernel's size) and the convolution with the mixed
kernel. Batch norms (folded into the convs at inference) and element-wise ops are not counted.
detectron2 0.6's ``utils.analysis`` imports caffe2, so fvcore is used directly.
"""
from typing import Dict, Tuple

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import matmul_flop_jit
from torch import nn

from condconv_det.layers import CondConv2d

__all__ = ["madds_analysis", "count_parameters"]


def madds_analysis(model: nn.Module, inputs: Tuple) -> FlopCountAnalysis:
    """fvcore FlopCountAnalysis of ``model(*inputs)`` with CondConv's ops counted.

    ``.total()`` is the number of multiply-adds; ``.by_module()`` breaks it down.
    """
    analysis = FlopCountAnalysis(model, inputs)
    # The kernel mix is a plain matrix product, which fvcore does not count by default.
    analysis.set_op_handle("aten::mm", matmul_flop_jit)
    # Batch norms fold into the convolutions at inference; a handle of None would not replace
    # fvcore's default one, so count them as zero explicitly.
    analysis.set_op_handle("aten::batch_norm", lambda inputs, outputs: 0)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return analysis


def count_parameters(model: nn.Module) -> Dict[str, int]:
    """``total`` parameters and ``experts``: those in CondConv expert weights and biases."""
    total = sum(p.numel() for p in model.parameters())
    experts = 0
    for module in model.modules():
        if isinstance(module, CondConv2d):
            experts += module.weight.numel() + (module.bias.numel() if module.bias is not None else 0)
    return {"total": total, "experts": experts}
