import pytest

from condconv_det.data import register_shapes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A four-image shapes split registered as shapes_train / shapes_val for the module."""
    root = tmp_path_factory.mktemp("shapes")
    register_shapes(root, num_train=4, num_val=1, progress=False)
    yield root
    register_shapes()  # back to the default registration
