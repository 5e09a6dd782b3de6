import pytest

from condconv_det.data import register_shapes_plain


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A four-image shapes split registered as shapes_plain_train / shapes_plain_val (the shapes
    configs' datasets) for the module."""
    root = tmp_path_factory.mktemp("shapes")
    register_shapes_plain(root, num_train=4, num_val=1, progress=False)
    yield root
    register_shapes_plain()  # back to the default registration
