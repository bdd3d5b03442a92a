"""A shapes set where one class is rare, for the repeat-factor tests and measurement (issue 35 item 5).

``rare_class_shapes(...)`` picks training pictures of the built-in shapes data (frcnn.data.synthetic,
unchanged) so that one class holds a given share of the boxes (1/20 by default, against 1/5 in the
generator): pictures are taken in index order, a picture holding the rare class only while the class's
share of the boxes taken so far stays within the target. The validation split keeps the generator's
balance, so the rare class's AP is measured on as many boxes as the others'.

As a script it writes both splits as a VOCdevkit tree for ``data=voc`` and prints the training command
(docs/CPU_PRESET.md, "Rare classes"):

    python -m tests.rare_classes /tmp/rare_ring          # ring: 1/20 of the training boxes
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

from frcnn.data.synthetic import CLASS_NAMES, ShapesDataset
from frcnn.data.writers import export_shapes_voc

RARE_CLASS = "ring"


class PictureSubset:
    """Pictures ``indices`` of a ShapesDataset, with the ``raw`` / ``split`` / ``class_names`` the VOC
    writer reads (frcnn.data.writers.export_shapes_voc)."""

    def __init__(self, base: ShapesDataset, indices: list[int]):
        self.base, self.indices = base, list(indices)
        self.split, self.class_names = base.split, base.class_names

    def __len__(self) -> int:
        return len(self.indices)

    def raw(self, index: int):
        return self.base.raw(self.indices[index])


def rare_class_shapes(num_train: int = 256, num_val: int = 128, rare_class: str = RARE_CLASS,
                      rare_share: float = 1 / 20, seed: int = 0,
                      image_size: int = 256) -> tuple[PictureSubset, ShapesDataset]:
    """(training pictures where ``rare_class`` is ``rare_share`` of the boxes, the balanced val split)."""
    rare = CLASS_NAMES.index(rare_class) + 1
    size = (image_size, image_size)
    pool = ShapesDataset("train", num_images=20 * num_train, seed=seed, image_size=size)
    chosen, boxes, rare_boxes = [], 0, 0
    for index in range(len(pool)):
        labels = pool.raw(index)[2]
        rare_here = int(np.sum(labels == rare))
        if rare_here and (rare_boxes + rare_here) > rare_share * (boxes + len(labels)):
            continue
        chosen.append(index)
        boxes, rare_boxes = boxes + len(labels), rare_boxes + rare_here
        if len(chosen) == num_train:
            return PictureSubset(pool, chosen), ShapesDataset("val", num_images=num_val, seed=seed, image_size=size)
    raise ValueError(f"not enough pictures in the pool for {num_train} training pictures")


def box_counts(dataset) -> Counter:
    return Counter(CLASS_NAMES[label - 1] for index in range(len(dataset)) for label in dataset.raw(index)[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--rare-class", default=RARE_CLASS, choices=CLASS_NAMES)
    parser.add_argument("--num-train", type=int, default=256)
    parser.add_argument("--num-val", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=256)
    args = parser.parse_args()
    train, val = rare_class_shapes(args.num_train, args.num_val, args.rare_class, image_size=args.image_size)
    export_shapes_voc(args.root, {"train": train, "val": val})
    counts = box_counts(train)
    print(f"train boxes: {dict(counts)} ({args.rare_class}: {counts[args.rare_class] / sum(counts.values()):.3f}); "
          f"val boxes: {dict(box_counts(val))}")
    print(f"python train.py experiment=cpu_shapes data=voc data.root={args.root} data.train_split=train "
          f"data.val_split=val 'data.classes=[{','.join(CLASS_NAMES)}]' data.scales=[{args.image_size}] "
          "data.sampler=repeat_factor")


if __name__ == "__main__":
    main()
