import sys

from harness.sweep.runner import main

if __name__ == "__main__":
    sys.exit(main())
