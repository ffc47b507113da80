"""`python -m control_plane`: see `control_plane.entrypoints.main`."""

import sys

from control_plane.entrypoints.main import main

sys.exit(main())
