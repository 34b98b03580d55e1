"""`python -m sparsenet`: the command line (guarded: Dask's worker processes import this module)."""
from sparsenet.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
