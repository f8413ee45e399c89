"""Layer 3: the appliance (drivers and their simulated twins, tests, results, services).

May import every layer below it (see DESIGN.md). Populated by the appliance work.
"""
