"""A gRPC member and client for the gateway's tests, with grpcio and no
generated code (messages are raw bytes).

    echo.py serve NAME        serve hapool.Echo on 127.0.0.1 (h2c), on a
                              port the system gives: prints "serving PORT"
    echo.py call ADDRESS N    make N rounds of calls through ADDRESS

Say answers "NAME <request>"; Count streams "1", "2", ... up to the number
asked; Chat answers each message of a stream as it comes; Fail ends with
NOT_FOUND and a message; Serving b"0" or b"1" sets
what the server's health check (grpc.health.v1.Health/Check, for the
server as a whole and for "hapool.Echo") answers: NOT_SERVING or SERVING;
another service is NOT_FOUND. The client prints one line per call, and
"done" at the end.

The clients end with os._exit, past the interpreter's clean-up: there,
grpcio (1.51) can wait for ever on a call's lock that one of its own
daemon threads held when the interpreter stopped it (seen about once in
200 runs, the client stuck in _Rendezvous.__del__).

    echo.py serving ADDRESS 0|1   call Serving on one server
"""

import os
import queue
import sys
from concurrent import futures

import grpc


def ident(b):
    return b


def serve(name):
    def say(request, context):
        return name.encode() + b" " + request

    def count(request, context):
        for i in range(1, int(request) + 1):
            yield str(i).encode()

    def chat(requests, context):
        for request in requests:
            yield name.encode() + b" " + request

    def fail(request, context):
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + request.decode())

    health = {"serving": True}

    def set_serving(request, context):
        health["serving"] = request == b"1"
        return b""

    def check(request, context):
        # HealthCheckRequest: field 1 (0x0a), a length, the service name.
        service = request[2:].decode() if request[:1] == b"\x0a" else ""
        if service not in ("", "hapool.Echo"):
            context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        # HealthCheckResponse: field 1 (0x08), SERVING 1 or NOT_SERVING 2.
        return b"\x08\x01" if health["serving"] else b"\x08\x02"

    echo = grpc.method_handlers_generic_handler(
        "hapool.Echo",
        {
            "Say": grpc.unary_unary_rpc_method_handler(say, ident, ident),
            "Count": grpc.unary_stream_rpc_method_handler(count, ident, ident),
            "Chat": grpc.stream_stream_rpc_method_handler(chat, ident, ident),
            "Fail": grpc.unary_unary_rpc_method_handler(fail, ident, ident),
            "Serving": grpc.unary_unary_rpc_method_handler(set_serving, ident, ident),
        },
    )
    checks = grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health",
        {"Check": grpc.unary_unary_rpc_method_handler(check, ident, ident)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((echo, checks))
    # Port 0: the system's choice, so no other test's socket can be on it.
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("serving", port, flush=True)
    server.wait_for_termination()


def call(address, rounds):
    with grpc.insecure_channel(address) as channel:
        say = channel.unary_unary("/hapool.Echo/Say", ident, ident)
        count = channel.unary_stream("/hapool.Echo/Count", ident, ident)
        fail = channel.unary_unary("/hapool.Echo/Fail", ident, ident)
        chat = channel.stream_stream("/hapool.Echo/Chat", ident, ident)
        for _ in range(rounds):
            attempt("say", lambda: say(b"hello", timeout=5).decode())
            attempt("count", lambda: " ".join(m.decode() for m in count(b"3", timeout=5)))
            attempt("fail", lambda: fail(b"x", timeout=5))
            attempt("chat", lambda: converse(chat))
    print("done", flush=True)


def converse(chat):
    """Three messages, each sent only once the answer to the one before
    has come: both directions of one call open at once."""
    outgoing = queue.Queue()

    def messages():
        while (message := outgoing.get()) is not None:
            yield message

    outgoing.put(b"1")
    answers = []
    for answer in chat(messages(), timeout=5):
        answers.append(answer.decode().split()[-1])
        outgoing.put(str(len(answers) + 1).encode() if len(answers) < 3 else None)
    return " ".join(answers)


def attempt(label, call):
    """Prints the label and the answer, or the error's code and details."""
    try:
        print(label, call(), flush=True)
    except grpc.RpcError as e:
        print(label, e.code().name, e.details(), flush=True)


def serving(address, value):
    with grpc.insecure_channel(address) as channel:
        channel.unary_unary("/hapool.Echo/Serving", ident, ident)(value.encode(), timeout=5)
    print("done", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    elif sys.argv[1] == "serving":
        serving(sys.argv[2], sys.argv[3])
        os._exit(0)
    else:
        call(sys.argv[2], int(sys.argv[3]))
        os._exit(0)
