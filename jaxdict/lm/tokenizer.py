"""Gemma 3 tokenizer: a SentencePiece model rebuilt from a GGUF vocabulary, or a `tokenizer.model`.

The GGUF stores the SentencePiece vocabulary (pieces, scores, types) but not the model's options.
The rebuilt ModelProto uses the options of Gemma's own tokenizer (BPE, byte fallback, identity
normaliser, no dummy prefix, whitespace escaped as U+2581), which reproduces llama.cpp's ids.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

SPACE_MARK = "\u2581"  # SentencePiece's visible space
# SentencePiece / GGUF piece types (the two enums share these numbers).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


def model_proto_from_vocab(pieces: Sequence[str], scores: Sequence[float],
                           types: Sequence[int]) -> bytes:
    """Serialised SentencePiece ModelProto for a Gemma vocabulary taken from a GGUF file."""
    if not (len(pieces) == len(scores) == len(types)):
        raise ValueError(
            f"vocabulary arrays differ in length: {len(pieces)} pieces, {len(scores)} scores, "
            f"{len(types)} types")
    index = {p: i for i, p in enumerate(pieces)}
    for special in ("<pad>", "<eos>", "<bos>", "<unk>"):
        if special not in index:
            raise ValueError(f"GGUF vocabulary has no {special!r} piece; not a Gemma tokenizer")
    proto = sp_pb2.ModelProto()
    for i, (piece, score, kind) in enumerate(zip(pieces, scores, types)):
        kind = int(kind)
        if kind == _USER_DEFINED:
            # Trap 1: llama.cpp's converter wrote U+2581 as a plain space in user-defined pieces
            # (ids 138-167 of Gemma 3 are runs of U+2581). SentencePiece matches them on the
            # escaped text, so they must carry U+2581 again.
            piece = piece.replace(" ", SPACE_MARK)
        if i == index["<unk>"]:
            # Trap 2: <unk> is stored as CONTROL; SentencePiece requires exactly one UNKNOWN piece.
            kind = _UNKNOWN
        proto.pieces.add(piece=piece, score=float(score), type=kind)
    ts = proto.trainer_spec
    ts.model_type = sp_pb2.TrainerSpec.BPE
    ts.vocab_size = len(pieces)
    ts.byte_fallback = True
    ts.unk_id, ts.bos_id, ts.eos_id = index["<unk>"], index["<bos>"], index["<eos>"]
    ts.pad_id = index["<pad>"]
    ts.unk_piece, ts.bos_piece, ts.eos_piece, ts.pad_piece = "<unk>", "<bos>", "<eos>", "<pad>"
    ns = proto.normalizer_spec
    ns.name = "identity"
    ns.add_dummy_prefix = False
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    return proto.SerializeToString()


class Tokenizer:
    """encode/decode for Gemma 3; BOS is prepended by `encode` unless `add_bos=False`."""

    def __init__(self, model_proto: bytes):
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.model_proto = model_proto
        self.vocab_size: int = self._sp.get_piece_size()
        # Special ids come from the pieces, not from GGUF metadata: the default GGUF's metadata
        # claims bos = eos = pad = 1, whereas Gemma uses <bos>=2, <eos>=1, <pad>=0.
        self.bos_id: int = self._sp.piece_to_id("<bos>")
        self.eos_id: int = self._sp.piece_to_id("<eos>")
        self.pad_id: int = self._sp.piece_to_id("<pad>")
        self.unk_id: int = self._sp.unk_id()

    @classmethod
    def from_file(cls, path: str | Path) -> "Tokenizer":
        """Load a SentencePiece `tokenizer.model` file (as shipped in HF Gemma 3 folders)."""
        return cls(Path(path).read_bytes())

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        ids = self._sp.encode(text, out_type=int)
        return [self.bos_id, *ids] if add_bos else list(ids)

    def encode_batch(self, texts: Sequence[str], add_bos: bool = True) -> list[list[int]]:
        out = self._sp.encode(list(texts), out_type=int)
        return [[self.bos_id, *ids] if add_bos else list(ids) for ids in out]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; control tokens (BOS, EOS, PAD) decode to nothing."""
        return self._sp.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        if not 0 <= int(i) < self.vocab_size:
            raise ValueError(f"token id {i} out of range [0, {self.vocab_size})")
        return self._sp.id_to_piece(int(i))

    def piece_to_id(self, piece: str) -> int:
        return self._sp.piece_to_id(piece)
