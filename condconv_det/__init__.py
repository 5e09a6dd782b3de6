"""CondConv for Detectron2."""
