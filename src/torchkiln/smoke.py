"""`python -m torchkiln.smoke`: the GPU check (torchkiln.inimage.smoke) under its contract name."""

import sys

from torchkiln.inimage.smoke import main

if __name__ == "__main__":
    sys.exit(main())
