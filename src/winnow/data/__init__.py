"""Records, readers and writers, chat formatting with loss masks, and batching."""

from winnow.data.batching import collate, epoch_batches, padding_fraction
from winnow.data.example import Example, content_id, merge_duplicates
from winnow.data.formatting import Encoded, EncodedSet, encode, encode_all, render, render_prompt
from winnow.data.readers import (
    FieldMap,
    LoadedData,
    check_weights_cover,
    load_examples,
    read_examples,
    read_scores,
    read_weights,
)
from winnow.data.writers import to_record, write_examples

__all__ = [
    "Encoded",
    "EncodedSet",
    "Example",
    "FieldMap",
    "LoadedData",
    "collate",
    "content_id",
    "encode",
    "encode_all",
    "epoch_batches",
    "check_weights_cover",
    "load_examples",
    "merge_duplicates",
    "padding_fraction",
    "read_examples",
    "read_scores",
    "read_weights",
    "render",
    "render_prompt",
    "to_record",
    "write_examples",
]
