"""Checks of the layers' constructor arguments and of ``CondConv2d``'s inputs. Each error names
the layer, the argument, the value given and what the argument takes."""

import numbers
import operator
from typing import Any, List, Optional, Tuple, Union

import torch

# What nn.Conv2d takes for a size per dimension: one int for both, or (height, width).
IntOrPair = Union[int, Tuple[int, int]]


def check_integer(owner: str, name: str, value: Any, minimum: int) -> int:
    """``value`` as an ``int``: any integer (a Python or NumPy one, an integer tensor of one
    element: whatever ``operator.index`` takes) other than a bool, of at least ``minimum``.

    Raises:
        TypeError: ``value`` is not an integer; the message names its type.
        ValueError: ``value`` is below ``minimum``.
    """
    return _check_integers(owner, name, value, [value], minimum, "an integer")[0]


def check_pair(owner: str, name: str, value: Any, minimum: int) -> Tuple[int, int]:
    """``value`` as ``(height, width)``, from what ``nn.Conv2d`` takes: an integer for both
    dimensions, or a sequence of one (both) or two (height, width); each at least ``minimum``.
    Raises as :func:`check_integer`."""
    allowed = "an integer or a pair of integers (height, width)"
    items = [value]
    if not isinstance(value, str) and _as_integer(value) is None:
        try:
            items = list(value)
        except TypeError:
            pass  # neither an integer nor a sequence: refused below, naming its type
        if len(items) not in (1, 2):
            raise ValueError(f"{owner} needs {name} >= {minimum}, {allowed}, got {value!r}")
    checked = _check_integers(owner, name, value, items, minimum, allowed)
    return (checked[0], checked[-1])


def check_number(owner: str, name: str, value: Any) -> float:
    """``value`` as a ``float`` if it is a real number other than a bool, else a TypeError that
    names its type; the caller checks the range."""
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{owner}: {name} must be a real number, got {value!r} of type {type(value).__name__}"
        )
    return float(value)


def resolve_padding(
    owner: str,
    padding: Union[str, IntOrPair],
    kernel_size: Tuple[int, int],
    stride: Tuple[int, int],
    dilation: Tuple[int, int],
) -> Tuple[int, int, int, int]:
    """``nn.Conv2d``'s ``padding`` (an integer, a pair, "same" or "valid") for a checked kernel
    size, stride and dilation, as (top, bottom, left, right)."""
    kh, kw = kernel_size
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(
                    f"{owner}: padding='same' is not supported for strides > 1 (got stride="
                    f"{stride}); give the padding as integers"
                )
            total_h = dilation[0] * (kh - 1)
            total_w = dilation[1] * (kw - 1)
            # Extra padding on the bottom/right, as nn.Conv2d does.
            return (total_h // 2, total_h - total_h // 2, total_w // 2, total_w - total_w // 2)
        raise ValueError(f"{owner}: padding must be 'same', 'valid' or ints, got {padding!r}")
    ph, pw = check_pair(owner, "padding", padding, 0)
    return (ph, ph, pw, pw)


def raise_bad_input(
    x: torch.Tensor,
    routing_weights: torch.Tensor,
    in_channels: int,
    num_experts: int,
    min_input_size: Tuple[int, int],
) -> None:
    """Raises the error that says what is wrong with the inputs of ``CondConv2d.forward``, once
    its one combined check has failed (the messages are built only then). TorchScript compiles
    it with the layer."""
    for name, value in (("input", x), ("routing_weights", routing_weights)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"CondConv2d expects {name} to be a torch.Tensor, got {type(value).__name__}"
            )
    if x.dim() != 4 or x.shape[1] != in_channels:
        hint = ""
        if x.dim() == 3 and x.shape[0] == in_channels:
            hint = "; for one example give a batch of one, x.unsqueeze(0)"
        raise ValueError(
            "CondConv2d expects input of shape (B, {}, H, W), got {}{}".format(
                in_channels, list(x.shape), hint
            )
        )
    if x.shape[2] < min_input_size[0] or x.shape[3] < min_input_size[1]:
        raise ValueError(
            "CondConv2d expects an input of at least (H, W) = {} (the kernel's extent, "
            "dilation included, less the padding), got {}; give a larger input or more "
            "padding".format(min_input_size, list(x.shape))
        )
    if not x.is_floating_point():
        raise TypeError(
            "CondConv2d expects a floating-point input, got dtype {}; convert it, e.g. "
            "x.float()".format(x.dtype)
        )
    if (
        routing_weights.dim() != 2
        or routing_weights.shape[0] != x.shape[0]
        or routing_weights.shape[1] != num_experts
    ):
        raise ValueError(
            "CondConv2d expects routing_weights of shape (B, num_experts) = ({}, {}), "
            "got {}".format(x.shape[0], num_experts, list(routing_weights.shape))
        )
    if not routing_weights.is_floating_point():
        raise TypeError(
            "CondConv2d expects floating-point routing_weights, got dtype {}; convert them, "
            "e.g. routing_weights.to(x.dtype)".format(routing_weights.dtype)
        )
    raise ValueError(
        "CondConv2d expects routing_weights on the input's device ({}), got them on {}; "
        "move them with routing_weights.to(x.device)".format(x.device, routing_weights.device)
    )


def _check_integers(
    owner: str, name: str, value: Any, items: List[Any], minimum: int, allowed: str
) -> List[int]:
    expected = f"{owner} needs {name} >= {minimum}, {allowed}"
    result = []
    for item in items:
        number = _as_integer(item)
        if number is None:
            of_type = f"of type {type(item).__name__}"
            if item is not value:
                of_type = f"whose {item!r} is {of_type}"
            raise TypeError(f"{expected}, got {value!r} {of_type}")
        result.append(number)
    if min(result) < minimum:
        raise ValueError(f"{expected}, got {value!r}")
    return result


def _as_integer(value: Any) -> Optional[int]:
    if _is_bool(value):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _is_bool(value: Any) -> bool:
    # Python counts a bool as an int (NumPy and torch bools pass operator.index), but
    # num_experts=True or kernel_size=False is a mistake, not a count.
    return isinstance(value, bool) or str(getattr(value, "dtype", "")) in ("bool", "torch.bool")
