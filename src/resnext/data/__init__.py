"""Data: datasets (image folders, CIFAR, digits), seeded batches, transforms and image decoding."""
