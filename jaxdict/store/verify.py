"""Read every chunk of every published shard and check it against the manifest."""
from __future__ import annotations

import dataclasses

from jaxdict.store.errors import CorruptShardError
from jaxdict.store.manifest import shard_checksum
from jaxdict.store.reader import ActivationStore


@dataclasses.dataclass(frozen=True)
class ShardProblem:
    slot: int
    writer: int
    message: str


def verify_store(store: ActivationStore, progress=None) -> list[ShardProblem]:
    """Problems found, one per bad shard (empty when the store is intact).

    Each shard is read in full, which exercises every chunk's and every shard index's crc32c; the
    bytes read are then checksummed and compared with the crc32 the writer recorded in the
    manifest, which catches a manifest that disagrees with the data (e.g. another store's part).
    """
    problems = []
    for shard in store.shards:
        try:
            cols = store.read_shard(shard)
        except CorruptShardError as e:
            problems.append(ShardProblem(shard.slot, shard.writer, str(e)))
        else:
            crc = shard_checksum(cols["acts"], cols["token_ids"], cols["doc_ids"], cols["positions"])
            if crc != shard.crc32:
                problems.append(ShardProblem(
                    shard.slot, shard.writer,
                    f"shard slot {shard.slot} (writer {shard.writer}): data crc32 {crc:#010x} "
                    f"disagrees with the manifest's {shard.crc32:#010x}",
                ))
        if progress is not None:
            progress(shard.rows)
    return problems
