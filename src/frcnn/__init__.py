"""frcnn: Faster R-CNN as the paper trains it. ``from frcnn import Detector`` (frcnn.inference.predictor)."""

__all__ = ["Detector", "Detections"]


def __getattr__(name: str):
    """Import the predictor on first use, so ``import frcnn.<module>`` stays light."""
    if name in __all__:
        from frcnn.inference import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'frcnn' has no attribute {name!r}")
