"""`python -m rankstack` runs the command line."""

import sys

from rankstack.cli import main

sys.exit(main())
