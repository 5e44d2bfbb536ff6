"""Data for ovs_jax: grain sources, transforms, vocabularies and preparation tools.

Modules: vocab (class names + synonyms), datasets (registry: get_dataset), demo (generated demo
dataset), transforms / targets (grain transforms), mappers (a recipe's train transforms by name),
grouping (orientation batches on planned canvases), loader (train/eval pipelines), global_batch
(host batches -> global jax.Arrays, main process only), prepare (ArrayRecord conversion CLI).
"""
from input_pipeline.files import DataError  # noqa: F401  (raised for every bad file or folder)
