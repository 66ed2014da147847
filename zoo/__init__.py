"""keras_branch.zoo: named, reproducible model entries with measured cards.

Installed as `keras_branch.zoo` (see setup.cfg), never as a bare `zoo`.
Entries arrive with the searches that produce them.
"""
