"""Token composition of the default corpus as harvested into a store: prose (docstrings and
comments) versus code, counted on the store's own tokens.

    python experiments/corpus_composition.py /work/stores/gemma-l9/resid_post.9 [--json out.json]

Each harvested document is tokenised whole (as the harvester does: jaxdict/harvest.py cuts a
document's tokens into windows); a token counts as prose when its first character lies in a
comment or a docstring (a string literal that is a statement of its own, found with Python's
`tokenize`), else as code. Only as many tokens of each document as the store holds are counted.
A document that `tokenize` cannot parse counts as "unparsed".
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tokenize
from collections import Counter

import numpy as np


def prose_char_mask(text: str) -> np.ndarray | None:
    """bool [len(text)]: characters inside comments and docstrings; None if text is not Python."""
    starts = np.cumsum([0] + [len(line) for line in text.splitlines(keepends=True)])
    mask = np.zeros(len(text) + 1, bool)

    def offset(row_col):
        return starts[row_col[0] - 1] + row_col[1]

    prev = tokenize.NEWLINE
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            standalone_string = tok.type == tokenize.STRING and prev in (
                tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING)
            if tok.type == tokenize.COMMENT or standalone_string:
                mask[offset(tok.start):offset(tok.end)] = True
            if tok.type not in (tokenize.COMMENT, tokenize.NL):
                prev = tok.type
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return None
    return mask[:-1]


def composition(store_path: str) -> dict:
    import jaxdict.lm
    from jaxdict.corpus import open_corpus
    from jaxdict.store import open_store

    store = open_store(store_path)
    meta = store.metadata
    doc_ids = store.read_column("doc_ids", 0, store.n_rows)
    rows_per_doc = Counter(doc_ids.tolist())
    tok = jaxdict.lm.load(meta.get("model", "gemma3-270m")).tokenizer
    spec = meta.get("corpus", {}).get("spec", "default") if isinstance(meta.get("corpus"), dict) else "default"
    counts = Counter()
    for doc in open_corpus(spec).documents():
        n = rows_per_doc.get(doc.doc_id, 0)
        if n == 0:
            if doc.doc_id > max(rows_per_doc):
                break
            continue
        pieces = tok._sp.encode(doc.text, return_type="proto").pieces[:n]
        mask = prose_char_mask(doc.text)
        if mask is None:
            counts["unparsed"] += len(pieces)
            continue
        # SentencePiece offsets are in bytes of the UTF-8 text; map to characters.
        byte_to_char = np.repeat(np.arange(len(doc.text)), [len(c.encode()) for c in doc.text])
        for p in pieces:
            c = byte_to_char[min(p.begin, len(byte_to_char) - 1)] if len(byte_to_char) else 0
            counts["prose" if mask[c] else "code"] += 1
        counts["documents"] += 1
    total = counts["prose"] + counts["code"] + counts["unparsed"]
    return {"store": store_path, "rows": int(store.n_rows), "documents": counts["documents"],
            "tokens_counted": total, "prose_tokens": counts["prose"], "code_tokens": counts["code"],
            "unparsed_tokens": counts["unparsed"], "prose_fraction": counts["prose"] / max(total, 1)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    result = composition(args.store)
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
