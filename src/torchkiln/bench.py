"""`python -m torchkiln.bench`: the benchmark (torchkiln.inimage.bench) under its contract name."""

import sys

from torchkiln.inimage.bench import main

if __name__ == "__main__":
    sys.exit(main())
