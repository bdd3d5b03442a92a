"""Reproduce a paper ablation table: `python scripts/reproduce.py lambda|anchors [--quick] [overrides]`.

Tables: conf/experiment/paper/ablation_{lambda,anchors}.yaml; logic: frcnn.cli.reproduce.
"""

import sys

from frcnn.cli.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
