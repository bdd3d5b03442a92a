"""--mode data: images/s through the transforms and the DataLoader against the model's training throughput."""

from __future__ import annotations

import time

from bench.common import SIZES


def bench_data(batches: int, train_step_ms: float | None) -> dict[str, float]:
    """Images/s of the built-in data through DetectionTransform + DataLoader (num_workers 0, as the
    default config), against the model's training throughput (images/s of the training step)."""
    from frcnn.data.datamodule import build_shapes_datamodule

    spec = SIZES["small"]
    dm = build_shapes_datamodule(num_train=256, num_val=8, batch_size=spec["train_batch"], num_workers=0)
    dm.setup()
    dataset = dm.train_dataset
    start = time.perf_counter()
    n = min(len(dataset), batches * spec["train_batch"])
    for i in range(n):
        dataset[i]
    per_item = (time.perf_counter() - start) / n
    loader = dm.train_dataloader()
    seen, start = 0, time.perf_counter()
    for b, (images, _) in enumerate(loader):
        seen += len(images)
        if b + 1 >= batches:
            break
    loader_ips = seen / (time.perf_counter() - start)
    result = {"dataset_images_per_s": 1.0 / per_item, "loader_images_per_s": loader_ips}
    print(f"[small] data: dataset + albumentations {1.0 / per_item:.0f} images/s, DataLoader (batch "
          f"{spec['train_batch']}, 0 workers) {loader_ips:.0f} images/s", flush=True)
    if train_step_ms is not None:
        model_ips = spec["train_batch"] / (train_step_ms / 1e3)
        result["model_train_images_per_s"] = model_ips
        print(f"[small] model training throughput {model_ips:.1f} images/s -> loading takes "
              f"{100 * model_ips / loader_ips:.1f}% of a training step's time", flush=True)
    return result
