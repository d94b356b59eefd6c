import sys

from streamqoe.cli import main

sys.exit(main())
