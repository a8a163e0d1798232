"""``python -m nn.bench``: the same as ``microtensor bench``."""

import sys

from nn.bench import main

if __name__ == "__main__":
    sys.exit(main())
