import sys

from ebsemu.cli import main

sys.exit(main())
