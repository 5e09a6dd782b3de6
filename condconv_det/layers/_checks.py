"""Checks of the layers' constructor arguments. Each error names the layer, the argument, the
value given and what the argument takes."""

import numbers
import operator
from typing import Any, List, Optional, Tuple, Union

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
