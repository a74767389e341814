"""`python -m seg_pet ...` entry point."""

import sys

from seg_pet.cli import main

sys.exit(main())
