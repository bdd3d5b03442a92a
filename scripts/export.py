"""Export a saved detector: `python scripts/export.py <run dir>/final/model.pt --format torchscript|onnx --out FILE`.

Options: --scale, --max-size, --no-verify (see --help); logic: frcnn.cli.export, frcnn.export.
"""

import sys

from frcnn.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
