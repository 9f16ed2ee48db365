"""`python -m lib.config [--effective] [params.yaml]`: check a params file, or print the effective settings."""
import sys

from lib.config.schema import main

raise SystemExit(main(sys.argv[1:]))
