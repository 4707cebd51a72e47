import sys

from fedstore.cli import main

sys.exit(main())
