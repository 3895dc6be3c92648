"""A minimal HTTP/1.1 keep-alive server for the hook benchmark: every request gets the same small JSON.

No framework and no business logic, so that the client side of each request dominates what is measured.
Run by ``hook_overhead.py``: ``python benchmarks/_echo_server.py PORT``.
"""

from __future__ import annotations

import asyncio
import sys

BODY = b'{"payload":[{"id":1,"name":"API inbox","channel_type":"Channel::Api"}],"id":90001,"status":"sent"}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
    + b"Content-Length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length:
                await reader.readexactly(length)
            writer.write(RESPONSE)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
