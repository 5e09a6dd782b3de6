"""The training tools' command line: detectron2's arguments and ``--overwrite``; ``launch`` runs
the processes (:func:`condconv_det._compat.launch`, which also runs them on CPU-only machines).
"""

from detectron2.engine import default_argument_parser

from .._compat import launch

__all__ = ["argument_parser", "launch"]


def argument_parser(epilog: str = None):
    """detectron2's command-line arguments of the training tools, and ``--overwrite`` (start a
    new run in an output folder that holds an earlier run's checkpoints)."""
    parser = default_argument_parser(epilog)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in an output folder that holds an earlier run's checkpoints "
        "(without it, such a folder is refused unless --resume continues the run)",
    )
    return parser
