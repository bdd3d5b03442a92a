"""Rewrite an older detector file as a current one: `python scripts/convert_detector.py OLD NEW --trust-source`.

Only for files whose source you trust (the old file is unpickled without restriction); logic:
frcnn.cli.convert_detector.
"""

import sys

from frcnn.cli.convert_detector import main

if __name__ == "__main__":
    sys.exit(main())
