"""``python -m factkeep`` runs the command-line interface (also used by ``accelerate launch``)."""

from factkeep.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
