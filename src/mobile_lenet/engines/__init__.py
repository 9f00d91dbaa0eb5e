"""Engines that run a model outside training: PyTorch, the NumPy references, the C on the host."""
