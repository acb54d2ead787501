"""``python -m gradalign_server --config CONFIG.toml``: the same as ``gradalign serve``."""

import sys

from ._cli import main

sys.exit(main())
