"""Baseline profiles of datasets, shared by the control plane and the sidecar.

:func:`read_table` reads Parquet, Arrow IPC or CSV (told apart by content);
:func:`build_profile` summarises features into a :class:`BaselineProfile` whose canonical bytes
are stable; :func:`load_baseline` takes a file holding a profile or a dataset. Needs numpy and
pyarrow only.
"""

from modelplane.profiles._build import (
    bin_counts,
    boolean_spelling,
    build_profile,
    category_strings,
    category_values,
    default_feature_names,
    is_categorical_type,
    is_numeric_type,
    numeric_values,
    quantile_edges,
)
from modelplane.profiles._columns import input_columns
from modelplane.profiles._load import (
    is_profile,
    load_baseline,
    profile_from_file,
    profiling_table,
)
from modelplane.profiles._model import (
    FORMAT,
    FORMAT_VERSION,
    BaselineProfile,
    CategoricalFeature,
    Feature,
    NumericFeature,
)
from modelplane.profiles._psi import PSI_EPSILON, psi_from_counts
from modelplane.profiles._tables import (
    CSV_PARSE,
    Format,
    check_unique_columns,
    detect_format,
    read_csv_text,
    read_table,
)

__all__ = [
    "CSV_PARSE",
    "FORMAT",
    "FORMAT_VERSION",
    "PSI_EPSILON",
    "BaselineProfile",
    "CategoricalFeature",
    "Feature",
    "Format",
    "NumericFeature",
    "bin_counts",
    "boolean_spelling",
    "build_profile",
    "category_strings",
    "category_values",
    "check_unique_columns",
    "default_feature_names",
    "detect_format",
    "input_columns",
    "is_categorical_type",
    "is_numeric_type",
    "is_profile",
    "load_baseline",
    "numeric_values",
    "profile_from_file",
    "profiling_table",
    "psi_from_counts",
    "quantile_edges",
    "read_csv_text",
    "read_table",
]
