"""Run a saved detector on images: `python scripts/detect.py <run dir>/final/model.pt IMAGES_OR_FOLDERS --out-dir DIR`.

Options: --score-thresh, --scale, --max-size, --device, --skip-bad (see --help); logic: frcnn.cli.detect.
"""

import sys

from frcnn.cli.detect import main

if __name__ == "__main__":
    sys.exit(main())
