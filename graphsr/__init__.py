"""graphsr: graph super-resolution of COCOA calorimeter data with conditional diffusion.

The subpackages follow the data (docs/index.md, "What is inside"); ``graphsr --help`` lists the commands.
"""

__version__ = "0.1.0"
