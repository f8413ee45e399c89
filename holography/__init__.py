"""Layer 1 of HoloDiff: optics and numerics.

Capture format, raw frame handling, angular-spectrum propagation, autofocus,
tiled reconstruction and the physical forward model (the simulator). This
package imports nothing else of ours (see DESIGN.md).
"""

__version__ = "0.1.0"
