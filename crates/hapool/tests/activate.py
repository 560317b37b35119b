"""A service manager's socket activation, for the gateway's tests: the
listening sockets are opened here and stay open while the service is
started, stopped and started again, as systemd keeps a .socket unit's.

    activate.py ADDRESS... -- COMMAND...

Listens on each IPv4 ADDRESS (port 0: one the system gives) and prints
"listening ADDRESS" for each, then reads lines from its standard input:
"start" starts COMMAND with the sockets as descriptors 3, 4, ... and
LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES set, as systemd does, and
prints "started PID"; "stop" sends it SIGTERM and prints "stopped CODE"
once it has ended. At the end of its input it stops the command.
"""

import fcntl
import os
import signal
import socket
import sys


def main():
    split = sys.argv.index("--")
    addresses, command = sys.argv[1:split], sys.argv[split + 1 :]
    sockets = []
    for address in addresses:
        host, port = address.rsplit(":", 1)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, int(port)))
        listener.listen(4096)
        sockets.append(listener)
        print("listening %s:%d" % listener.getsockname(), flush=True)
    child = None
    for line in sys.stdin:
        word = line.strip()
        if word == "start" and child is None:
            child = start(command, sockets)
            print("started", child, flush=True)
        elif word == "stop" and child is not None:
            print("stopped", stop(child), flush=True)
            child = None
        else:
            print("cannot", word, flush=True)
    if child is not None:
        stop(child)


def start(command, sockets):
    pid = os.fork()
    if pid != 0:
        return pid
    try:
        # Out of the way first, so that no socket is overwritten by
        # another's copy, then to 3, 4, ..., kept open across the exec.
        high = [fcntl.fcntl(s.fileno(), fcntl.F_DUPFD, 100) for s in sockets]
        for i, fd in enumerate(high):
            os.dup2(fd, 3 + i, inheritable=True)
        env = dict(os.environ)
        env["LISTEN_PID"] = str(os.getpid())
        env["LISTEN_FDS"] = str(len(sockets))
        env["LISTEN_FDNAMES"] = ":".join("listener" for _ in sockets)
        os.execve(command[0], command, env)
    finally:
        os._exit(127)


def stop(pid):
    os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    main()
