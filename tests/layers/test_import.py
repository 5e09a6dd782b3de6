"""The layer package is plain PyTorch: it imports and runs with detectron2 unavailable."""

import subprocess
import sys
import textwrap


def test_layers_import_with_detectron2_blocked():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["detectron2"] = None  # any `import detectron2...` now raises ImportError
        try:
            import detectron2  # noqa: F401
        except ImportError:
            pass
        else:
            raise SystemExit("detectron2 was not blocked")
        import torch
        from condconv_det.layers import CondConv2dNorm, CondConvRouter, RoutedCondConv2d
        y = RoutedCondConv2d(4, 6, 3, padding=1, num_experts=2)(torch.randn(2, 4, 5, 5))
        assert y.shape == (2, 6, 5, 5)
        router = CondConvRouter(4, 2)
        conv = CondConv2dNorm(4, 6, 1, num_experts=2, norm=torch.nn.BatchNorm2d(6), router=router)
        assert conv(torch.randn(2, 4, 5, 5)).shape == (2, 6, 5, 5)
        assert not any(m.startswith("detectron2.") for m in sys.modules)
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_checkpoint_converters_and_upcycling_import_with_detectron2_blocked():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["detectron2"] = None
        import torch
        from condconv_det.checkpoint import load_checkpoint_strict, upcycle_state_dict
        from condconv_det.layers import RoutedCondConv2d
        static = torch.nn.Conv2d(4, 6, 3, padding=1)
        layer = RoutedCondConv2d(4, 6, 3, padding=1, num_experts=2)
        load_checkpoint_strict(layer, upcycle_state_dict(static.state_dict(), layer))
        x = torch.randn(2, 4, 5, 5)
        torch.testing.assert_close(layer(x), static(x), rtol=1e-5, atol=1e-5)
        try:
            from condconv_det.checkpoint import CondConvCheckpointer  # noqa: F401
        except ImportError:
            print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
