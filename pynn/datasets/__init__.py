"""Datasets in IDX format (MNIST, Fashion-MNIST)."""
