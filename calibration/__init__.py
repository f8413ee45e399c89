"""Layer 2: calibration procedures and the calibration store.

Imports only :mod:`holography` (see DESIGN.md). Populated by the calibration work.
"""
