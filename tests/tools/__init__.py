import contextlib
import importlib.util
import pathlib
import sys

TOOLS = pathlib.Path(__file__).resolve().parents[2] / "tools"


def load_tool(name: str):
    """Imports tools/<name>.py as a module (the tools are scripts, not a package). tools/ goes on
    the path as when a tool runs as a script: each tool imports tools/_tool_env.py first."""
    if str(TOOLS) not in sys.path:
        sys.path.insert(0, str(TOOLS))
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def small_shapes(root):
    """The bundled shapes datasets registered on 16 training and 4 validation images of 128x128
    generated under ``root``, for trainings that must learn within a few hundred iterations;
    the default registration is restored afterwards."""
    from condconv_det.data import register_shapes_plain

    register_shapes_plain(
        root, num_train=16, num_val=4, image_size=128, object_size=(20, 56), progress=False
    )
    try:
        yield root
    finally:
        register_shapes_plain()
