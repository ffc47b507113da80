import sys

from atelier.cli import main

sys.exit(main())
