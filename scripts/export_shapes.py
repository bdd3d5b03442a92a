"""Write the built-in shapes data as a VOCdevkit tree or a COCO tree, to try data=voc / data=coco.

    python scripts/export_shapes.py voc  /tmp/shapes_voc   # then data=voc data.root=/tmp/shapes_voc
    python scripts/export_shapes.py coco /tmp/shapes_coco  # then data=coco data.root=/tmp/shapes_coco
"""

from __future__ import annotations

import argparse
from pathlib import Path

from frcnn.data.synthetic import ShapesDataset
from frcnn.data.writers import export_shapes_coco, export_shapes_voc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("format", choices=("voc", "coco"))
    parser.add_argument("out", type=Path)
    parser.add_argument("--num-train", type=int, default=256)
    parser.add_argument("--num-val", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    train = ShapesDataset("train", num_images=args.num_train, seed=args.seed)
    val = ShapesDataset("val", num_images=args.num_val, seed=args.seed)
    if args.format == "voc":
        export_shapes_voc(args.out, {"trainval": train, "test": val})
        print(f"VOCdevkit tree at {args.out}: data=voc data.root={args.out} "
              f"data.classes=[{','.join(train.class_names)}]")
    else:
        for split, dataset in (("train2017", train), ("val2017", val)):
            export_shapes_coco(args.out / "annotations" / f"instances_{split}.json", args.out / split, dataset)
        print(f"COCO tree at {args.out}: data=coco data.root={args.out}")


if __name__ == "__main__":
    main()
