"""``python -m listener.review --config listener.toml``: the same as ``mura-review``."""
import sys

from listener.review.server import main

sys.exit(main())
