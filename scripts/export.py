"""Export a saved detector: `python scripts/export.py <run dir>/final/model.pt --format torchscript|onnx --out FILE`.

Options: --scale, --max-size, --no-verify (see --help); logic: frcnn.cli.export_detector, frcnn.inference.exportable.
"""

import sys

from frcnn.cli.export_detector import main

if __name__ == "__main__":
    sys.exit(main())
