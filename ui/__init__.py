"""Layer 4: people's interfaces: the ``holodiff`` command line and the touchscreen app."""
