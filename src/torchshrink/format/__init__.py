"""Exact codecs for the ``.tsk`` file format: dense floats, bit-packed codes,
relative-index sparse (Deep Compression / EIE) and canonical Huffman coding.

Each codec maps a numpy array to ``(bytes, meta)`` and back bit for bit; see
:mod:`torchshrink.format.codecs` for the list and each module for its byte layout.
"""

from __future__ import annotations

from .bitpack import decode_bitpack, encode_bitpack, pack_bits, packed_size, unpack_bits
from .codecs import decode, decode_dense, encode_dense
from .errors import TskFormatError
from .forms import unpack
from .records import TskFile, read_tsk
from .tsk import SaveInfo, inspect_rows, load, save
from .huffman import decode_huffman, encode_huffman, encoded_bits
from .sparse import decode_relative_sparse, encode_relative_sparse, from_relative_index, to_relative_index

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
    "from_relative_index",
    "inspect_rows",
    "load",
    "pack_bits",
    "packed_size",
    "read_tsk",
    "save",
    "to_relative_index",
    "unpack",
    "unpack_bits",
]
