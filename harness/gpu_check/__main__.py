import sys

from harness.gpu_check.cli import main

sys.exit(main())
