import sys

from revbench.cli import main

sys.exit(main())
