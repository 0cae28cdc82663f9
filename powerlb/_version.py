"""The one place powerlb's version is written (a module of its own, importing nothing).

setup.py reads it from this file without importing powerlb; ``powerlb.__version__``,
``twistd powerlb --version``, ``powerlb-ctl --version`` and ``/api/v1/stats`` report it.
"""

__version__ = "0.1.0"
