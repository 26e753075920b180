"""``python -m utils.export_weights SRC DST [--fp16] [--note TEXT] [--force]``: the command-line
entry point of ``utils.inference.export`` (a trainer's weights as a compact model-zoo file)."""
import sys

from utils.inference.export import main

if __name__ == "__main__":
    sys.exit(main())
