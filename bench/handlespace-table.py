#!/usr/bin/env python3
"""Prints the handlespace benchmark results as a Markdown table.

Run `cargo bench -p hapool-handlespace --bench handlespace` first; this reads
criterion's estimates from target/criterion/<POLICY>/<op>/<size>/new/.
"""
import json
import pathlib
import sys

root = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"
policies = ["RR", "WRR", "RAND", "WRAND", "PRI", "LU", "LUD", "PLU", "RLU", "RPLU", "RLUD",
            "PLUD", "RPLUD", "WRAND-DPF", "LU-DPF", "LUD-DPF", "PLU-DPF", "PLUD-DPF"]
ops = ["register", "reregister", "deregister", "resolve3"]
sizes = ["10", "1000", "100000"]


def mean_ns(policy, op, size):
    f = root / policy / op / size / "new" / "estimates.json"
    if not f.exists():
        return None
    return json.loads(f.read_text())["mean"]["point_estimate"]


def fmt(ns):
    if ns is None:
        return "–"
    return f"{ns:.0f}" if ns < 10_000 else f"{ns / 1000:.1f} µs"


header = ["policy"] + [f"{op} {size}" for op in ops for size in sizes]
print("| " + " | ".join(header) + " |")
print("|" + "---|" * len(header))
worst = {op: 0.0 for op in ops}
for p in policies:
    row = [p]
    for op in ops:
        for size in sizes:
            row.append(fmt(mean_ns(p, op, size)))
        small, big = mean_ns(p, op, "10"), mean_ns(p, op, "100000")
        if small and big:
            worst[op] = max(worst[op], big / small)
    print("| " + " | ".join(row) + " |")
print()
print("Largest 100,000-PE / 10-PE ratio per operation: " +
      ", ".join(f"{op} {worst[op]:.1f}×" for op in ops))
if not any(worst.values()):
    sys.exit("no results found under " + str(root))
