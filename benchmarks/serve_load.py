"""Load on ``glm-engine serve``: N concurrent streaming clients on loopback, a bounded count of requests per level.

Starts the server on a free port (or uses ``--url``), sends the same text-completion requests one at a time (the
baseline) and then with 2, 4, 8 and 16 in flight, each streamed (``stream_options.include_usage``). Prints output
tokens/s, time to first token and the gap between streamed chunks (p50/p99), and the peak KV blocks read from
``/metrics``, with ratios to one at a time. Asserts nothing; name the CPU beside the numbers.

Run: ``python benchmarks/serve_load.py [--checkpoint FOLDER_OR_PRESET] [--requests 16 --max-tokens 32]``.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from glm_engine.backends.cpu.features import cpu_model_name
from glm_engine.engine.source import DEFAULT_MODEL

START_TIMEOUT_S = 300


def start_server(checkpoint: str, port: int, dtype: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "glm_engine.cli", "serve", "--checkpoint", checkpoint, "--port", str(port)]
    args = [*command, "--dtype", dtype, "--kv-cache-memory", "1GiB"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit(f"the server did not start within {START_TIMEOUT_S} s")


def one_request(port: int, prompt: str, max_tokens: int) -> dict[str, float]:
    """TTFT, gaps between chunks and the output tokens of one streamed completion."""
    body = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    stamps, tokens = [], 0
    for raw in response:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        elif chunk["choices"] and chunk["choices"][0]["text"]:
            stamps.append(time.perf_counter())
    conn.close()
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return {"ttft": stamps[0] - start if stamps else float("nan"), "gaps": gaps, "tokens": tokens}


def kv_peak(port: int, stop: threading.Event, out: list[float]) -> None:
    while not stop.is_set():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith("glm_engine_kv_blocks_used "):
                    out.append(float(line.split()[-1]))
        time.sleep(0.05)


def percentile(ordered: list[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def level(port: int, prompts: list[str], max_tokens: int, concurrency: int) -> dict[str, float]:
    stop, samples = threading.Event(), [0.0]
    poller = threading.Thread(target=kv_peak, args=(port, stop, samples), daemon=True)
    poller.start()
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda p: one_request(port, p, max_tokens), prompts))
    elapsed = time.perf_counter() - start
    stop.set()
    poller.join()
    gaps = sorted(g for r in results for g in r["gaps"]) or [float("nan")]
    ttfts = sorted(r["ttft"] for r in results if r["ttft"] == r["ttft"]) or [float("nan")]  # nan: no text came
    return {
        "tps": sum(r["tokens"] for r in results) / elapsed,
        "ttft50": statistics.median(ttfts),
        "ttft99": percentile(ttfts, 0.99),
        "itl50": statistics.median(gaps),
        "itl99": percentile(gaps, 0.99),
        "kv": max(samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=DEFAULT_MODEL, help="what glm-engine serve loads (default: the demo)")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--port", type=int, default=8771)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", default="1,2,4,8,16")
    args = parser.parse_args()
    server = start_server(args.checkpoint, args.port, args.dtype)
    try:
        prompts = [f"Request {i}: the history of the city is" for i in range(args.requests)]
        level(args.port, prompts[:2], 4, 2)  # warm-up
        print(f"# glm-engine serve {args.checkpoint}, cpu {args.dtype}, {cpu_model_name()}")
        print(f"{args.requests} streamed completions of {args.max_tokens} tokens per level\n")
        print(
            "| concurrency | output t/s | vs one at a time | TTFT p50 / p99 ms | chunk gap p50 / p99 ms "
            "| p99 gap vs one at a time | peak KV blocks |"
        )
        print("|---|---|---|---|---|---|---|")
        base = None
        for n in (int(c) for c in args.concurrency.split(",")):
            r = level(args.port, prompts, args.max_tokens, n)
            base = base or r
            print(
                f"| {n} | {r['tps']:.1f} | {r['tps'] / base['tps']:.2f}x | {1e3 * r['ttft50']:.0f} / "
                f"{1e3 * r['ttft99']:.0f} | {1e3 * r['itl50']:.1f} / {1e3 * r['itl99']:.1f} "
                f"| {r['itl99'] / base['itl99']:.2f}x | {r['kv']:.0f} |"
            )
    finally:
        server.terminate()
        server.wait(60)


if __name__ == "__main__":
    main()
