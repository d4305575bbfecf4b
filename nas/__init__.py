"""sparse-nas: neural architecture search for sparse neural networks.

The package root stays light: importing ``nas`` (or ``nas.client``) never imports torch or ray.
"""

__version__ = "0.1.0"
