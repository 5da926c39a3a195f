import sys

from feedalign.cli import main

sys.exit(main())
