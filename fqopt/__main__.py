import sys

from fqopt.cli import main

sys.exit(main())
