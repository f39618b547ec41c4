#!/usr/bin/env python3
"""Translate a corpus on a Ray cluster with admin-convert, shard by shard.

    pip install ray
    python scripts/ray_translate.py MODEL SRC [--ref REF] [--address ADDR]
        [--num-shards N] [--binary PATH] [-o OUT] [-- TRANSLATE FLAGS...]

The driver reads SRC once and puts it in Ray's object store; task I of N
(one per shard, N = the cluster's CPUs unless given) feeds it to
`admin-convert translate MODEL - --num-shards N --shard-id I` on whichever
worker Ray picks, and returns that shard's fairseq-format lines (H-<id>:
global sentence ids). The driver writes the shards to temporary files and
runs `admin-convert merge-shards --plain` on them: the hypotheses come out in
input order (to -o OUT or stdout), identical to one unsharded `translate`
run, and with --ref the BLEU of the whole corpus goes to stderr.

The binary must exist at the same path on every worker (--binary, default:
`admin-convert` on PATH), as must MODEL (and --dict-dir if passed after --);
the corpus itself travels through Ray. Everything after `--` goes to
`translate` unchanged (--beam, --remove-bpe, --batch-size, --buffer-size,
--dict-dir, ...); --remove-bpe is also applied to REF for BLEU.

--address: a running cluster (`ray start --head` / `ray://host:10001`);
without it Ray starts a local one (--num-cpus workers, default: all CPUs).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile


def parse_args(argv):
    extra = []
    if "--" in argv:
        k = argv.index("--")
        argv, extra = argv[:k], argv[k + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model")
    p.add_argument("src")
    p.add_argument("--ref", help="references (BPE'd like SRC) for BLEU")
    p.add_argument("--address", help="Ray cluster address (default: start a local one)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local cluster")
    p.add_argument("--num-shards", type=int, help="default: the cluster's CPUs")
    p.add_argument("--binary", default=shutil.which("admin-convert") or "admin-convert")
    p.add_argument("-o", "--output", help="merged hypotheses (default: stdout)")
    a = p.parse_args(argv)
    a.translate_flags = extra
    return a


def remove_bpe_flag(flags):
    """The --remove-bpe[=MODE] of the translate flags, for merge-shards --ref."""
    out = []
    for i, f in enumerate(flags):
        if f == "--remove-bpe":
            out = [f]
            if i + 1 < len(flags) and not flags[i + 1].startswith("-"):
                out.append(flags[i + 1])
        elif f.startswith("--remove-bpe="):
            out = [f]
    return out


def main(argv):
    import ray

    a = parse_args(argv)
    if a.address:
        ray.init(address=a.address)
    else:
        ray.init(num_cpus=a.num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1")
    shards = a.num_shards or max(1, int(ray.cluster_resources().get("CPU", 1)))

    @ray.remote(num_cpus=1)
    def translate_shard(corpus, shard_id):
        cmd = [a.binary, "translate", a.model, "-", "--num-shards", str(shards),
               "--shard-id", str(shard_id), "--quiet"] + a.translate_flags
        r = subprocess.run(cmd, input=corpus, capture_output=True)
        if r.returncode != 0:
            raise RuntimeError(f"shard {shard_id}: {r.stderr.decode(errors='replace').strip()}")
        return r.stdout

    with open(a.src, "rb") as f:
        corpus = ray.put(f.read())
    outputs = ray.get([translate_shard.remote(corpus, i) for i in range(shards)])
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, text in enumerate(outputs):
            path = os.path.join(tmp, f"shard{i}.txt")
            with open(path, "wb") as f:
                f.write(text)
            files.append(path)
        cmd = [a.binary, "merge-shards", "--plain"] + files
        if a.ref:
            cmd += ["--ref", a.ref] + remove_bpe_flag(a.translate_flags)
        if a.output:
            cmd += ["-o", a.output]
        r = subprocess.run(cmd, capture_output=True)
        sys.stdout.buffer.write(r.stdout)
        sys.stderr.buffer.write(r.stderr)
    ray.shutdown()
    return r.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
