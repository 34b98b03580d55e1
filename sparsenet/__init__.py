"""sparsenet: does pruning a neural network make it cheaper to run? Measured."""

__version__ = "0.1.0"
