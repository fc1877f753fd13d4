import sys

from taviseg.cli import main

sys.exit(main())
