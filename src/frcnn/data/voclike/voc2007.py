"""PASCAL VOC 2007 statistics that the built-in VOC-like data is generated from (docs/VOCLIKE.md).

Sources (docs/VOCLIKE.md gives them in full):
- [DK] VOC 2007 devkit doc, Table 1 (per-class images / objects, "non-difficult objects only");
  http://host.robots.ox.ac.uk/pascal/VOC/voc2007/htmldoc/ ; totals 9,963 images, 24,640 objects.
- [AN] computed from the 9,963 VOC 2007 annotation files (trainval + test): reproduces every [DK]
  figure; sizes, aspect ratios, difficult / truncated fractions and the objects-per-image histogram
  are not published as tables, so they are this computation's.
- [GL] VOC 2007 annotation guidelines: a box covers the visible extent; "truncated" if more than
  15-20% of the object lies outside the box; no label if < 10-20% visible.

Sizes are r = sqrt(box area / image area); aspect ratios are box width / height.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClassStats:
    """One class of VOC 2007: trainval non-difficult objects and images [DK]; size r and aspect
    w / h percentiles p10 / p50 / p90 over trainval + test non-difficult objects [AN] (p50 of
    trainval); difficult and truncated fractions over all objects [AN]."""

    name: str
    objects: int
    images: int
    r_p10: float
    r_p50: float
    r_p90: float
    aspect_p10: float
    aspect_p50: float
    aspect_p90: float
    difficult: float
    truncated: float


VOC2007_CLASSES: tuple[ClassStats, ...] = (
    #          name        objects images  r p10   p50   p90   w/h p10 p50  p90  difficult truncated
    ClassStats("aeroplane",    306,  238, 0.083, 0.455, 0.831, 1.00, 2.08, 3.52, 0.079, 0.298),
    ClassStats("bicycle",      353,  243, 0.147, 0.304, 0.787, 0.55, 1.04, 1.67, 0.145, 0.369),
    ClassStats("bird",         486,  330, 0.105, 0.335, 0.760, 0.53, 1.05, 1.83, 0.196, 0.192),
    ClassStats("boat",         290,  181, 0.094, 0.265, 0.725, 0.52, 1.37, 3.49, 0.301, 0.264),
    ClassStats("bottle",       505,  244, 0.073, 0.140, 0.356, 0.28, 0.38, 0.69, 0.246, 0.404),
    ClassStats("bus",          229,  186, 0.165, 0.406, 0.822, 0.73, 1.42, 2.78, 0.160, 0.479),
    ClassStats("car",         1250,  713, 0.085, 0.244, 0.783, 0.97, 1.65, 2.64, 0.230, 0.501),
    ClassStats("cat",          376,  337, 0.274, 0.630, 0.908, 0.67, 1.12, 1.87, 0.033, 0.422),
    ClassStats("chair",        798,  445, 0.133, 0.263, 0.519, 0.49, 0.76, 1.28, 0.446, 0.689),
    ClassStats("cow",          259,  141, 0.109, 0.324, 0.738, 0.59, 1.07, 1.68, 0.266, 0.372),
    ClassStats("diningtable",  215,  200, 0.246, 0.514, 0.852, 1.00, 1.78, 3.08, 0.309, 0.828),
    ClassStats("dog",          510,  421, 0.222, 0.503, 0.857, 0.60, 1.04, 1.79, 0.065, 0.399),
    ClassStats("horse",        362,  287, 0.216, 0.490, 0.784, 0.47, 0.94, 1.59, 0.114, 0.375),
    ClassStats("motorbike",    339,  245, 0.151, 0.440, 0.833, 0.60, 1.15, 1.72, 0.125, 0.377),
    ClassStats("person",      4690, 2008, 0.092, 0.291, 0.666, 0.32, 0.58, 1.03, 0.136, 0.635),
    ClassStats("pottedplant",  514,  245, 0.093, 0.180, 0.569, 0.41, 0.76, 1.25, 0.183, 0.385),
    ClassStats("sheep",        257,   96, 0.075, 0.214, 0.595, 0.60, 1.08, 1.64, 0.248, 0.377),
    ClassStats("sofa",         248,  229, 0.297, 0.523, 0.859, 1.00, 1.60, 2.31, 0.407, 0.686),
    ClassStats("train",        297,  261, 0.241, 0.569, 0.875, 0.77, 1.51, 3.54, 0.081, 0.590),
    ClassStats("tvmonitor",    324,  256, 0.117, 0.243, 0.353, 0.67, 1.03, 1.38, 0.132, 0.294),
)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in VOC2007_CLASSES)

TRAINVAL_IMAGES = 5011  # [DK]
TRAINVAL_OBJECTS_NON_DIFFICULT = 12608  # [DK]
TRAINVAL_OBJECTS_ALL = 15662  # [AN]

# Objects per image, all objects (difficult included), trainval [AN]: P(n) for n = 1..4, then the
# fractions of images with >= 5, >= 10, >= 20 objects and the maximum.
OBJECTS_PER_IMAGE_ALL = {"p1": 0.372, "p2": 0.233, "p3": 0.118, "p4": 0.075, "ge5": 0.202, "ge10": 0.049,
                         "ge20": 0.0046, "max": 42, "mean": 3.13}
# The same over non-difficult objects (what the devkit counts) [AN].
OBJECTS_PER_IMAGE_NON_DIFFICULT = {"p1": 0.435, "p2": 0.241, "p3": 0.126, "p4": 0.071, "ge5": 0.127,
                                   "ge10": 0.022, "mean": 2.52, "max": 30}
SINGLE_CLASS_IMAGES = 0.619  # images whose non-difficult objects are of one class [AN]

# Size r of non-difficult objects, all classes, trainval [AN]: p10 / p25 / p50 / p75 / p90.
SIZE_R_NON_DIFFICULT = {"p10": 0.101, "p25": 0.164, "p50": 0.310, "p75": 0.537, "p90": 0.745}
SIZE_R_DIFFICULT_P50 = 0.10  # difficult objects are small [AN]
# Aspect w / h of non-difficult objects, trainval [AN]: p10 / p50 / p90 and the tall / wide shares.
ASPECT_NON_DIFFICULT = {"p10": 0.38, "p50": 0.84, "p90": 1.95, "tall_lt_0.75": 0.428, "wide_gt_1.33": 0.248}
DIFFICULT_FRACTION = 0.195  # of all trainval objects [AN]
TRUNCATED_FRACTION = 0.520  # of all trainval objects [AN]
# Image shapes [AN]: longer side 500 px for 95.7 %; 500x375 42.5 %, 500x333 14.4 %; portrait 18 %.
LANDSCAPE_FRACTION = 0.814
PORTRAIT_FRACTION = 0.180
