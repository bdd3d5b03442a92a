"""Reproduce the paper's tables: `python scripts/reproduce.py all|lambda|anchors|proposals|training|schemes
[--quick] [--seeds ...] [overrides]`.

Tables: conf/experiment/paper/ablation_{lambda,anchors,proposals,training}.yaml; logic:
frcnn.cli.reproduce (report: frcnn.reproduce.report); schemes (§3.2): frcnn.reproduce.schemes.
"""

import logging
import sys

from frcnn.cli.console import configure_console
from frcnn.cli.reproduce import main

if __name__ == "__main__":
    # one line per log record, frcnn's console rules (no Lightning tips, no foreign deprecations)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    configure_console()
    sys.exit(main())
