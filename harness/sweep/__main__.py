import sys

from harness.sweep.run import main

if __name__ == "__main__":
    sys.exit(main())
