"""keras_branch.export: SavedModel and TFLite export with parity checks.

Installed as `keras_branch.export` (see setup.cfg), never as a bare `export`.
"""
