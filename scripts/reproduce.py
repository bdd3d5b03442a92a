"""Reproduce the paper's tables: `python scripts/reproduce.py all|lambda|anchors|proposals|training|schemes
[--quick] [--seeds ...] [overrides]`.

Tables: conf/experiment/paper/ablation_{lambda,anchors,proposals,training}.yaml; logic:
frcnn.cli.reproduce (report: frcnn.reproduce.report); schemes (§3.2): frcnn.reproduce.schemes.
"""

import sys

from frcnn.cli.reproduce import configure_output, main

if __name__ == "__main__":
    configure_output()
    sys.exit(main())
