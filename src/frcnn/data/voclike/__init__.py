"""The built-in VOC-like data (``data=voclike``): 20 classes drawn from PASCAL VOC 2007's statistics,
written once as a VOCdevkit tree and read by the VOC reader (docs/VOCLIKE.md)."""
