"""Jaga's self-supervised learning core: PyTorch, torchvision, timm and NumPy only, so it runs without the service's
dependencies; never imports ``api`` or ``worker``."""
