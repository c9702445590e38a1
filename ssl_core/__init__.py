"""Jaga's self-supervised learning core in pure PyTorch (plus NumPy, Pillow, FAISS); never imports ``api`` or
``worker``."""
