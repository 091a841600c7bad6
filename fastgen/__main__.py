import sys

from fastgen.cli import main

sys.exit(main())
