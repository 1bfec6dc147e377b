"""``python -m clip_rt``: the ``clip-rt`` command line."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="clip-rt")
