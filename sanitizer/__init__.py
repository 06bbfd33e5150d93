"""Backdoor sanitization library: data, attacks, metrics, model I/O and defenses.

Importing this package (and its torch-free modules listed in docs/ARCHITECTURE.md) does not
import torch; heavy modules are imported where they are used.
"""

__version__ = "0.1.0"
