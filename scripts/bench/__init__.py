"""The modes of scripts/benchmark.py, one module each (common: settings and timers; models: frcnn and its
torchvision twin)."""
