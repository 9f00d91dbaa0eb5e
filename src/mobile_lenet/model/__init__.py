"""The network and how it is trained: data, images, the PyTorch model, checkpoints, training."""
