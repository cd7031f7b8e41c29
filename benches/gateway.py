"""Load for `headstream gateway` (stdlib only): throughput of embeddings batches, or latency of
single texts sent open-loop at a fixed rate. Prints one JSON line.

  gateway.py URL FILE throughput [--batch 32] [--concurrency 2] [--limit N] [--passes 3]
  gateway.py URL FILE latency --rate R [--duration 20]
"""
import argparse
import http.client
import json
import queue
import statistics
import threading
import time
import urllib.parse


def texts_of(path, limit):
    out = []
    with open(path) as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line)["text"])
            if limit and len(out) >= limit:
                break
    return out


class Client:
    def __init__(self, url, encoding):
        u = urllib.parse.urlparse(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        self.encoding = encoding

    def embed(self, texts):
        body = json.dumps({"input": texts, "model": "all-minilm-l6-v2", "encoding_format": self.encoding})
        self.conn.request("POST", "/v1/embeddings", body, {"Content-Type": "application/json"})
        r = self.conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"{r.status}: {data[:200]!r}")
        answer = json.loads(data)
        assert len(answer["data"]) == len(texts)
        return answer


def throughput(a, texts):
    batches = [texts[i:i + a.batch] for i in range(0, len(texts), a.batch)]
    clients = [Client(a.url, a.encoding) for _ in range(a.concurrency)]
    clients[0].embed(batches[0])  # warm-up
    rates = []
    for _ in range(a.passes):
        work = queue.Queue()
        for b in batches:
            work.put(b)

        def worker(c):
            while True:
                try:
                    b = work.get_nowait()
                except queue.Empty:
                    return
                c.embed(b)

        t = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(c,)) for c in clients]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        rates.append(len(texts) / (time.perf_counter() - t))
    return {"mode": "throughput", "batch_size": a.batch, "concurrency": a.concurrency,
            "texts": len(texts), "sentences_per_s": statistics.median(rates), "passes": rates}


def latency(a, texts):
    n = int(a.rate * a.duration)
    start = time.perf_counter() + 0.5
    schedule = queue.Queue()
    for i in range(n):
        schedule.put((start + i / a.rate, texts[i % len(texts)]))
    lat, errors = [], []

    def worker():
        c = Client(a.url, a.encoding)
        while True:
            try:
                due, text = schedule.get_nowait()
            except queue.Empty:
                return
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            try:
                c.embed([text])
                # From when it was due: waiting for a free worker counts (open loop).
                lat.append(time.perf_counter() - due)
            except Exception as e:  # noqa: BLE001 - reported in the output
                errors.append(str(e))

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    lat.sort()
    pick = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else None
    return {"mode": "latency", "rate_per_s": a.rate, "requests": n, "errors": len(errors),
            "p50_ms": pick(0.50), "p90_ms": pick(0.90), "p99_ms": pick(0.99)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("file")
    p.add_argument("mode", choices=["throughput", "latency"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--encoding", default="base64", choices=["base64", "float"])
    a = p.parse_args()
    texts = texts_of(a.file, a.limit)
    out = throughput(a, texts) if a.mode == "throughput" else latency(a, texts)
    out.update(input=a.file, encoding=a.encoding)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
