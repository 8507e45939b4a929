"""`python -m soak` (make soak)."""

import sys

from .run import main

sys.exit(main())
