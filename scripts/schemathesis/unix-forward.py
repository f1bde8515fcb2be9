"""Forwards a loopback TCP port to a Unix socket, one connection to one
connection, so that HTTP tools without Unix-socket support (schemathesis)
can talk to swiftlet-vmm's --api-sock. Prints the port on stdout once
listening; runs until killed.

    python3 unix-forward.py SOCKET_PATH
"""
import asyncio
import sys


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def main(path):
    async def serve(client_reader, client_writer):
        try:
            vmm_reader, vmm_writer = await asyncio.open_unix_connection(path)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, vmm_writer), pipe(vmm_reader, client_writer))

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
