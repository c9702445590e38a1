"""Jaga's self-supervised learning core: data, augmentations, backbones, methods, training and evaluation.

Pure PyTorch (plus NumPy, Pillow and FAISS): nothing here imports from ``api`` or ``worker``.
"""
