"""Tokenizer rebuilt from the GGUF vocabulary: round trips, special ids, the two converter traps."""
from __future__ import annotations

import pytest

from jaxdict.lm import gguf_loader
from jaxdict.lm.tokenizer import SPACE_MARK, Tokenizer, model_proto_from_vocab


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    _, proto, _ = gguf_loader.load_default()
    return Tokenizer(proto)


ROUND_TRIP = [
    "def f(x):\n\treturn {'a': [x ** 2 for _ in range(3)]}  # comment\n",
    "emoji: 😀🚀👩‍💻 and flags 🇫🇷",
    "中文字符和日本語のテキスト, 한국어도",
    "runs of whitespace:    four,\t\ttabs,\n\n\nnewlines,  \u00a0nbsp ",
    "  leading and trailing spaces  ",
    "bytes fallback: \u0000\u0007 \U0001F9EC \ufffd",
    "",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert ids[0] == tok.bos_id
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode(text, add_bos=False)) == text


def test_special_ids_and_pieces(tok):
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.vocab_size == 262144
    assert tok.encode("The capital of France is") == [2, 818, 5279, 529, 7001, 563]
    assert tok.id_to_piece(5279) == SPACE_MARK + "capital"
    with pytest.raises(ValueError, match="out of range"):
        tok.id_to_piece(262144)


def test_whitespace_user_defined_pieces_are_used(tok):
    # ids 138-167 are runs of 2..31 spaces (trap 1: stored with plain spaces in the GGUF)
    assert tok.id_to_piece(138) == SPACE_MARK * 2
    assert tok.encode("x" + " " * 4, add_bos=False)[-1] == 140
    assert tok.encode("\n\n", add_bos=False) == [108]


def test_unk_is_typed_unknown(tok):
    # trap 2: <unk> is CONTROL in the GGUF but SentencePiece needs it UNKNOWN
    assert tok._sp.is_unknown(3) and not tok._sp.is_control(3)


def test_bad_vocabulary_is_refused():
    with pytest.raises(ValueError, match="differ in length"):
        model_proto_from_vocab(["<pad>"], [0.0, 1.0], [3])
    with pytest.raises(ValueError, match="'<bos>'"):
        model_proto_from_vocab(["<pad>", "<eos>", "<unk>"], [0.0] * 3, [3] * 3)
