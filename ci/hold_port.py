"""Holds 127.0.0.1:<port> the way a closed connection's TIME_WAIT does: as a connection's
source port, which no listener shows but which fails a server's bind there. Prints `held
<port>` once it does, then sleeps (bounded) until killed.

    python3 ci/hold_port.py 15432 120
"""
import socket
import sys
import time


def main():
    port, seconds = int(sys.argv[1]), float(sys.argv[2])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.socket()
    try:
        client.bind(("127.0.0.1", port))
    except OSError as e:
        print(f"not held: {e}", flush=True)
        return
    client.connect(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    print(f"held {port}", flush=True)
    time.sleep(seconds)
    server.close()
    client.close()


if __name__ == "__main__":
    main()
