"""Reproduce a paper ablation table: `python scripts/reproduce.py lambda|anchors|schemes [--quick] [overrides]`.

Tables: conf/experiment/paper/ablation_{lambda,anchors}.yaml; logic: frcnn.cli.reproduce;
schemes (alternating / approximate joint / non-approximate joint, §3.2): frcnn.cli.schemes.
"""

import sys

from frcnn.cli.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
