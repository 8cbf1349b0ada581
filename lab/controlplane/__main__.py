import sys

from lab.controlplane.daemon import main

sys.exit(main())
