"""How fast the Label Studio backend answers, through HTTP, on one thread.

    python benchmarks/scripts/serve_speed.py MODEL DATA.spacy [--tasks 1000] [--repeats 200]

Starts `python -m spacy_bilstm_crf serve MODEL --threads 1 --no-training` on 127.0.0.1 and
sends it what Label Studio sends: `/predict` of one task of 50 tokens, `--repeats` times
(latency: median and 95th percentile, the connection kept open as Label Studio's requests
session keeps it), and `/predict` of `--tasks` tasks in one request, as the data manager's
"Retrieve predictions" sends them (words per second, words being the pipeline's tokens).
Beside them, in this process on one thread, the same 1,000 texts through `nlp.pipe` with the
`confidence` setting: what the HTTP route adds. The rounds alternate, so that both see the
same machine. Tasks are the sentences of DATA (e.g. CoNLL-2003 test); the 50-token task is
consecutive sentences cut to 50 tokens.
"""

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import spacy
import torch
from spacy.tokens import DocBin

CONFIG = (
    '<View><Labels name="label" toName="text">{labels}</Labels>'
    '<Text name="text" value="$text"/></View>'
)
ROOT = Path(__file__).resolve().parents[2]


def sentences(path: Path, nlp: spacy.Language) -> list[str]:
    found = []
    for doc in DocBin().from_disk(path).get_docs(nlp.vocab):
        parts = list(doc.sents) if doc.has_annotation("SENT_START") else [doc[:]]
        found += [part.text.strip() for part in parts if len(part)]
    return [text for text in found if text]


def fifty_tokens(texts: list[str], nlp: spacy.Language) -> str:
    doc = nlp.make_doc(" ".join(texts[:20]))
    return doc[:50].text


def start(model: Path, port: int, work: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "spacy_bilstm_crf", "serve", str(model), "--threads", "1"]
    command += ["--no-training", "--port", str(port), "--work", str(work)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("the backend did not start in 180 s")


def predict(connection: http.client.HTTPConnection, body: bytes) -> dict:
    connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    payload = json.loads(response.read())
    if response.status != 200:
        raise SystemExit(f"/predict answered {response.status}: {payload}")
    return payload


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=19191)
    parser.add_argument("--work", type=Path, default=Path("/tmp/serve_speed_work"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    nlp = spacy.load(args.model)
    for name in nlp.pipe_names:
        if nlp.get_pipe_meta(name).factory == "bilstm_crf":
            nlp.get_pipe(name).cfg.update(confidence=True, threads=1)
            labels = nlp.get_pipe(name).labels
    config = CONFIG.format(labels="".join(f'<Label value="{label}"/>' for label in labels))
    texts = sentences(args.data, nlp)[: args.tasks]
    words = sum(len(doc) for doc in nlp.tokenizer.pipe(texts))
    one = fifty_tokens(texts, nlp)

    def body(batch: list[str]) -> bytes:
        tasks = [{"id": i, "data": {"text": text}} for i, text in enumerate(batch)]
        return json.dumps({"tasks": tasks, "project": "1.1", "label_config": config}).encode()

    server = start(args.model, args.port, args.work)
    latencies, http_rates, pipe_rates = [], [], []
    try:
        connection = http.client.HTTPConnection("127.0.0.1", args.port, timeout=600)
        single, many = body([one]), body(texts)
        for _ in range(10):  # warm up both
            predict(connection, single)
        list(nlp.pipe(texts[:100]))
        for _ in range(args.rounds):
            for _ in range(args.repeats // args.rounds):
                begin = time.perf_counter()
                predict(connection, single)
                latencies.append(time.perf_counter() - begin)
            begin = time.perf_counter()
            results = predict(connection, many)["results"]
            http_rates.append(words / (time.perf_counter() - begin))
            assert len(results) == len(texts)
            begin = time.perf_counter()
            list(nlp.pipe(texts))
            pipe_rates.append(words / (time.perf_counter() - begin))
    finally:
        server.terminate()
        server.wait(60)
    latencies.sort()
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    print(
        f"serve speed, {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, 1 torch thread, model {args.model}\n"
        f"/predict, one task of 50 tokens, {len(latencies)} requests: median "
        f"{1000 * statistics.median(latencies):.1f} ms, p95 {1000 * p95:.1f} ms\n"
        f"/predict, {len(texts):,} tasks ({words:,} words) in one request: "
        f"{statistics.median(http_rates):,.0f} words/s (rounds: "
        f"{', '.join(f'{rate:,.0f}' for rate in http_rates)})\n"
        f"nlp.pipe of the same texts in this process, confidence on: "
        f"{statistics.median(pipe_rates):,.0f} words/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
