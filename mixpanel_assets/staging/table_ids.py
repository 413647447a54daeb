"""Counting distinct_id values staged more than once in a whole table (people, identity mappings).

Staging does not deduplicate profiles (two profiles with one id are both exported, as Mixpanel's
pipeline does), so the count is recorded with the table instead, by the writer of the parts: an
object store's manifest then proves `distinct_id_unique` without reading the table back.

Rows are records.py's lines, whose first key is `distinct_id` (a JSON string) and whose next key is
fixed per table, so the id is the bytes before that key's first occurrence: a quote inside an id
is escaped, so the key cannot appear inside it. Ids are kept as 64-bit hashes (8 bytes a row); a
collision between two different ids (~n^2/2^65) could only make the check fail, never pass.
"""

from __future__ import annotations

from array import array

import numpy as np
import xxhash

from mixpanel_assets.schema import IDENTITY_TABLE, PEOPLE_TABLE, columns

# The key after distinct_id in each table's rows (records.py writes them in schema order).
_NEXT_KEY = {table: b',"' + columns(table)[1][0].encode() + b'":' for table in (PEOPLE_TABLE, IDENTITY_TABLE)}
_hash = xxhash.xxh3_64_intdigest


class IdCounter:
    def __init__(self, table: str):
        self.next_key = _NEXT_KEY.get(table)
        self.hashes = array("Q")

    def add(self, lines: list[bytes]) -> None:
        if self.next_key is None:
            return
        key = self.next_key
        self.hashes.extend(_hash(line[:line.find(key)]) for line in lines)

    def duplicates(self) -> int | None:
        """distinct_id values seen more than once; None for a table without a known row layout."""
        if self.next_key is None:
            return None
        values = np.frombuffer(self.hashes, dtype=np.uint64) if self.hashes else np.empty(0, np.uint64)
        ordered = np.sort(values)
        repeated = ordered[1:][ordered[1:] == ordered[:-1]]
        return len(np.unique(repeated))
