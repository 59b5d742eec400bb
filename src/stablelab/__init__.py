"""stablelab: find, measure and fix training instability (Lightning + Hydra).

Importing the package is cheap: torch and Lightning are imported lazily by the modules
that need them, so ``stablelab-train --help`` and ``--cfg job`` stay fast.
"""

__version__ = "0.1.0"
