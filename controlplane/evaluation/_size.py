"""The dataset size check evaluations make: :func:`controlplane.dataset_size.check_dataset_size`,
shared with registration."""

from controlplane.dataset_size import check_dataset_size

__all__ = ["check_dataset_size"]
