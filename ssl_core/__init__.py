"""Jaga's self-supervised learning core in pure PyTorch (plus NumPy, and FAISS for ``knn_index``); never imports
``api`` or ``worker``."""
