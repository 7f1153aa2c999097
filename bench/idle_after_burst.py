"""Idle RSS after one 240 MB gzip JSON request to mlp, read every second (docs/benchmark.md, heavy requests).

Run from the repository root: ``.venv/bin/python bench/idle_after_burst.py``. Starts its own server on 127.0.0.1
(ports 18500-18502), prints RSS in MiB before, then each second for 25 s after the answer, and stops it.
"""
import gzip, http.client, os, subprocess, sys, time
proc = subprocess.Popen([".venv/bin/python", "-m", "v2server", "--model-repository", "model_repository", "--http-port", "18500", "--grpc-port", "18501", "--metrics-port", "18502", "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1", "--metrics-address", "127.0.0.1"], stderr=subprocess.DEVNULL)
def rss():
    return int(open(f"/proc/{proc.pid}/status").read().split("VmRSS:")[1].split()[0]) // 1024
for _ in range(120):
    try:
        c = http.client.HTTPConnection("127.0.0.1", 18500, timeout=5); c.request("GET", "/v2/health/ready")
        if c.getresponse().status == 200: break
    except OSError: pass
    time.sleep(0.5)
time.sleep(2)
print("idle before", rss())
body = b'{"inputs":[{"name":"INPUT__0","shape":[1,784],"datatype":"FP32","data":[' + b",".join([b"0.123456789"] * 20_000_000) + b']}]}'
z = gzip.compress(body, 6); print("body", len(body), "gz", len(z))
c = http.client.HTTPConnection("127.0.0.1", 18500, timeout=300)
c.request("POST", "/v2/models/mlp/infer", z, {"Content-Encoding": "gzip", "Content-Type": "application/json"})
r = c.getresponse(); print(r.status, r.read()[:120])
for t in range(25):
    print(t, rss()); time.sleep(1)
proc.terminate(); proc.wait()
