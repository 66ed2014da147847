"""Searches that produce TreeSpecs: task affinity, Learning to Branch, evolution."""
