"""raytrade: a Ray-based distributed ML platform for algorithmic trading.

Importing the package has no side effects (no Ray, MLflow or torch start-up); import the
stage you need, e.g. ``from raytrade.data import read_bars, validate_bars``.
"""

__version__ = "0.1.0"
