"""Data: labeled frames become versioned, sharded Parquet datasets that training reads.

    schema    the Arrow schemas of frames, labels and dataset rows
    augment   offline oversampling of rare groups and the reader's online pipeline (albumentations)
    dataset   versioned, sharded Parquet datasets; which batches wait for the next version
    reader    the torch IterableDataset over a version (ranks, workers, resume)
    diff      what changed between two dataset versions
"""
