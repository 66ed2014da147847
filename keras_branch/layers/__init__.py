"""Registered Keras layers of keras_branch."""
