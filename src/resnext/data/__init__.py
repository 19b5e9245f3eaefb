"""Data: readers of every source (image folders, WebDataset shards, parquet, CIFAR, digits) into
one ImageSet, pack, seeded batches, transforms, the image decoder and Preprocessing."""
