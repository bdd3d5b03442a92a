"""The shapes export writes layouts that the VOC and COCO loaders read back to the same boxes."""

import numpy as np

from frcnn.data.coco import COCODataset
from frcnn.data.synthetic import ShapesDataset
from frcnn.data.voc import VOCDataset
from frcnn.data.writers import export_shapes_coco, export_shapes_voc


def rounded(boxes):
    return np.rint(boxes).astype(np.float32)


def test_voc_export_reads_back_the_same_boxes_and_labels(tmp_path):
    shapes = ShapesDataset("val", num_images=4, seed=3)
    export_shapes_voc(tmp_path, {"test": shapes})
    voc = VOCDataset(tmp_path, "test", class_names=shapes.class_names)
    assert len(voc) == 4
    for i in range(4):
        _, boxes, labels = shapes.raw(i)
        image, boxes_back, labels_back = voc.raw(i)
        assert image.shape == (256, 256, 3)
        np.testing.assert_array_equal(labels_back, labels)
        np.testing.assert_allclose(boxes_back, rounded(boxes))  # 1-based on disk, 0-based after load


def test_coco_export_reads_back_the_same_boxes_and_labels(tmp_path):
    shapes = ShapesDataset("train", num_images=3, seed=1)
    ann = export_shapes_coco(tmp_path / "annotations" / "instances.json", tmp_path / "images", shapes)
    coco = COCODataset(ann, tmp_path / "images")
    assert coco.class_names == tuple(shapes.class_names) or list(coco.class_names) == list(shapes.class_names)
    for i in range(3):
        _, boxes, labels = shapes.raw(i)
        _, boxes_back, labels_back = coco.raw(i)
        np.testing.assert_array_equal(labels_back, labels)
        np.testing.assert_allclose(boxes_back, rounded(boxes))
