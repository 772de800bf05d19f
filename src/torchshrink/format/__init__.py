"""The ``.tsk`` file: a model's weights in their smallest exact stored form.

Codecs (how one stream becomes bytes: dense floats, bit-packed codes, relative-index
sparse, canonical Huffman, raw) live here; the forms (how a tensor is stored as streams)
are the :mod:`torchshrink.forms` registry, which this package uses and never names.
"""

from __future__ import annotations

from .bitpack import decode_bitpack, encode_bitpack, pack_bits, packed_size, unpack_bits
from .codecs import decode, decode_dense, encode_dense
from .errors import TskFormatError
from .huffman import decode_huffman, encode_huffman, encoded_bits
from .records import TskFile, read_tsk
from .sparse import decode_relative_sparse, encode_relative_sparse, from_relative_index, to_relative_index
from .tsk import SaveInfo, encoded_bytes, inspect_rows, load, runtime_model, save

__all__ = [
    "SaveInfo",
    "TskFile",
    "TskFormatError",
    "decode",
    "decode_bitpack",
    "decode_dense",
    "decode_huffman",
    "decode_relative_sparse",
    "encode_bitpack",
    "encode_dense",
    "encode_huffman",
    "encode_relative_sparse",
    "encoded_bits",
    "encoded_bytes",
    "from_relative_index",
    "inspect_rows",
    "load",
    "pack_bits",
    "packed_size",
    "read_tsk",
    "runtime_model",
    "save",
    "to_relative_index",
    "unpack_bits",
]
