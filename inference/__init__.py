"""Layer 2: from reconstructed fields to a result (detection, classifier, differential, MDW).

Imports only :mod:`holography` (see DESIGN.md). Populated by the analysis work.
"""
