#!/usr/bin/env python3
"""The shard stream of a row, as the write-behind module expects it (STREAM_SHARDS=N).

    python3 examples/shard.py <row-id> <N> [<stream>]

prints the stream the application must write that row's entries to: `<stream>:{i}` with
i = CRC-32 (zlib's) of the row id modulo N, or the stream itself when N is 1. The row id is the user
id of a batch (`<id>` in `userdata-events:<id>/visited`, the records' `id`) or the `user_email` of a
create-user entry. Python 3 standard library only.
"""

import sys
import zlib


def shard_of(row_id: str, shards: int) -> int:
    """The shard of a row: CRC-32 (IEEE, zlib) of its UTF-8 bytes, modulo the number of shards."""
    return zlib.crc32(row_id.encode("utf-8")) % shards


def shard_stream(row_id: str, shards: int, stream: str = "userdata-stream") -> str:
    """The stream to XADD (or WB.WRITE) that row's entries to."""
    if shards <= 1:
        return stream
    return f"{stream}:{{{shard_of(row_id, shards)}}}"


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4) or not argv[2].isdigit() or not 1 <= int(argv[2]) <= 1024:
        print(f"usage: {argv[0]} <row-id> <STREAM_SHARDS 1..1024> [<stream>]", file=sys.stderr)
        return 2
    stream = argv[3] if len(argv) == 4 else "userdata-stream"
    print(shard_stream(argv[1], int(argv[2]), stream))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
