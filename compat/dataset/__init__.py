"""The documented dataset classes (``ImageDataset``, ``VolumeDataset``, ``VideoDataset``), in progress."""
