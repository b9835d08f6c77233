"""The Python side of moving runs between mhmoe and PyTorch: the Arrow shard reader and the loader port
against `mhmoe tokenize` / mhmoe's own loader, and 2-rank data-parallel training (torchrun, gloo on CPU:
DDP; FSDP where CUDA is) against the single-process run. test/scaleout.test.ts does the mhmoe <-> PyTorch
round trip of a training run."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import unittest

import torch

from arrow_shards import ShardError, ShardReader, open_shard_set, read_rows, verify_shard
from shard_loader import Loader
from testutil import INTEROP_DIR, PYTHON, tiny_config

ROOT = os.path.dirname(INTEROP_DIR)
MHMOE = os.path.join(ROOT, "mhmoe")
BUN = os.path.join(ROOT, "node_modules", ".bin", "bun")
HAVE_MHMOE = os.path.exists(MHMOE) and os.path.exists(BUN)

# Dumps mhmoe's loader: per batch a weighted checksum of its ids and the position after it.
DUMP_TS = """
import { Loader, openShardSet } from "%s/src/data/index.ts";
const [dir, B, T, seed, n] = process.argv.slice(2);
const l = new Loader(await openShardSet(dir), { batchSize: +B, seqLen: +T, seed: +seed, split: "train" });
const out = [];
for (let i = 0; i < +n; i++) {
  const b = await l.next();
  out.push({ sum: b.reduce((a, x, j) => (a + x * ((j %% 7) + 1)) %% 1000000007, 0), pos: l.position() });
}
console.log(JSON.stringify(out));
"""


def checksum(batch) -> int:
    flat = [int(x) for x in batch.reshape(-1)]
    return sum(x * ((j % 7) + 1) for j, x in enumerate(flat)) % 1000000007


def tokenize(inputs: str, out: str, *flags) -> None:
    res = subprocess.run([MHMOE, "tokenize", "--input", inputs, "--out", out, *flags], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    if res.returncode != 0:
        raise AssertionError(res.stderr)


def write_texts(directory: str, sizes, seed: int = 0) -> list:
    os.makedirs(directory)
    rng = random.Random(seed)
    words = "the quick brown fox jumps over a lazy dog while experts route heads of tokens".split()
    docs = []
    for i, size in enumerate(sizes):
        text = ""
        while len(text) < size:
            text += rng.choice(words) + " "
        text = text[:size]
        with open(os.path.join(directory, f"doc{i:03d}.txt"), "w", encoding="utf-8") as f:
            f.write(text)
        docs.append(text)
    return docs


@unittest.skipUnless(HAVE_MHMOE, "needs the checkout's ./mhmoe and bun")
class ShardLoaderTest(unittest.TestCase):
    """Documents longer than a row (65536 tokens) and than a record batch (262144), spanning shards."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.docs = write_texts(os.path.join(cls.tmp.name, "texts"), [300_000, 70_000] + [300 + 97 * i for i in range(30)])
        cls.shards = os.path.join(cls.tmp.name, "shards")
        tokenize(os.path.join(cls.tmp.name, "texts"), cls.shards, "--shard-tokens", "100000", "--val-fraction", "0")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_rows_join_into_the_input_documents(self):
        s = open_shard_set(self.shards)
        self.assertGreater(len(s.splits["train"]), 3)
        docs, parts, continued = [], [], 0
        for ids, continuation, ends in read_rows(s, "train"):
            continued += continuation
            parts.append(bytes(ids.astype("uint8")).decode("utf-8"))
            if ends:
                docs.append("".join(parts))
                parts = []
        self.assertGreater(continued, 4)  # the long documents really are continuation rows
        self.assertEqual(docs, self.docs)  # inputs walked in code-point order: doc000, doc001, ...

    def test_batches_and_positions_equal_mhmoes_loader(self):
        # 8*128 tokens a batch: about 400 batches an epoch, so 450 cross every shard and an epoch boundary.
        B, T, seed, n = 8, 128, 3, 450
        script = os.path.join(self.tmp.name, "dump.ts")
        with open(script, "w") as f:
            f.write(DUMP_TS % ROOT)
        res = subprocess.run([BUN, script, self.shards, str(B), str(T), str(seed), str(n)], capture_output=True,
                             text=True, timeout=120)
        self.assertEqual(res.returncode, 0, res.stderr)
        ref = json.loads(res.stdout)
        s = open_shard_set(self.shards)
        self.assertEqual(s.fingerprint, ref[0]["pos"]["fingerprint"])
        loader = Loader(s, B, T, seed=seed)
        for i, r in enumerate(ref):
            self.assertEqual(checksum(loader.next()), r["sum"], f"batch {i}")
            self.assertEqual(loader.position(), r["pos"], f"position after batch {i}")
        self.assertGreaterEqual(ref[-1]["pos"]["epoch"], 1)
        # resume mid-document; skip() moves exactly as next() (what the other ranks' batches cost a rank)
        resumed = Loader.resume(s, B, T, ref[200]["pos"])
        for i in range(201, 260):
            if i % 3:
                resumed.skip()
            else:
                self.assertEqual(checksum(resumed.next()), ref[i]["sum"], f"batch {i} after resume")
            self.assertEqual(resumed.position(), ref[i]["pos"])
        # walking past batches reads offsets and one token per batch, never a record batch's tokens
        walker = Loader(s, B, T, seed=seed)
        for i in range(40):
            walker.skip()
            self.assertIsNone(walker.batch._values)
        self.assertEqual(walker.position(), ref[39]["pos"])

    def test_corrupt_and_foreign_files_are_one_line_errors(self):
        copy = os.path.join(self.tmp.name, "copy")
        shutil.copytree(self.shards, copy)
        s = open_shard_set(copy)
        shard = s.splits["train"][1]
        with open(shard.path, "r+b") as f:
            f.seek(shard.bytes // 2)
            byte = f.read(1)
            f.seek(shard.bytes // 2)
            f.write(bytes([byte[0] ^ 1]))
        with self.assertRaisesRegex(ShardError, "checksum mismatch"):
            verify_shard(s, shard)
        with open(shard.path, "r+b") as f:
            f.truncate(shard.bytes - 10)
        with self.assertRaisesRegex(ShardError, "truncated or replaced"):
            open_shard_set(copy)
        with self.assertRaisesRegex(ShardError, "tokenizer mismatch"):
            open_shard_set(self.shards, "gpt2")
        notes = os.path.join(self.tmp.name, "notes.arrow")
        with open(notes, "wb") as f:
            f.write(b"hello, not arrow at all")
        with self.assertRaisesRegex(ShardError, "not a valid Arrow IPC file"):
            ShardReader.open(notes, 257)


def launch(nproc: int, *args, timeout: int = 300):
    """python3 interop/torchrun.py --standalone --nproc_per_node N interop/train_torch.py ARGS."""
    cmd = [PYTHON, os.path.join(INTEROP_DIR, "torchrun.py"), "--standalone", "--nproc_per_node", str(nproc),
           os.path.join(INTEROP_DIR, "train_torch.py"), *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def train(*args):
    # One thread, as torchrun gives each rank: the same kernels on both sides of a comparison.
    return subprocess.run([PYTHON, os.path.join(INTEROP_DIR, "train_torch.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))


def metrics(run: str) -> list:
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@unittest.skipUnless(HAVE_MHMOE, "needs the checkout's ./mhmoe (tokenize) and bun")
class DataParallelTest(unittest.TestCase):
    """2 ranks x 1 micro-batch == 1 process x --grad-accum 2: the same global batch, the same curve."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        write_texts(os.path.join(cls.tmp.name, "texts"), [400 + 131 * i for i in range(24)], seed=5)
        cls.shards = os.path.join(cls.tmp.name, "shards")
        tokenize(os.path.join(cls.tmp.name, "texts"), cls.shards, "--shard-tokens", "3000")
        cls.config = os.path.join(cls.tmp.name, "config.json")
        config = tiny_config("mhmoe", vocab_size=257, hidden_size=32, num_attention_heads=4,
                             max_position_embeddings=32, router_z_loss_coef=1e-3)
        with open(cls.config, "w") as f:
            json.dump(config.to_dict(), f)
        cls.common = ["--data", cls.shards, "--config", cls.config, "--steps", 6, "--batch-size", 2, "--seq-len", 16,
                      "--grad-accum", 2, "--warmup", 2, "--lr", "1e-2", "--log-every", 1, "--seed", 4]
        cls.single = os.path.join(cls.tmp.name, "single")
        res = train(*cls.common, "--out", cls.single)
        assert res.returncode == 0, res.stderr

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def assertSameCurve(self, run: str):
        a, b = metrics(self.single), metrics(run)
        self.assertEqual([r["step"] for r in b], [1, 2, 3, 4, 5, 6])
        for x, y in zip(a, b):
            # The same micro-batches; DDP averages the two ranks' gradients where one process sums them in
            # order, and the losses are summed across ranks in float64: rounding only (measured: 7.5e-8
            # relative loss, 1.8e-7 relative gradient norm over 12 steps).
            self.assertAlmostEqual(x["loss"], y["loss"], delta=1e-6 * x["loss"], msg=f"step {x['step']}")
            self.assertAlmostEqual(x["grad_norm"], y["grad_norm"], delta=1e-5 * x["grad_norm"])
            self.assertAlmostEqual(x["aux_loss"], y["aux_loss"], delta=1e-6 * x["aux_loss"])
            self.assertEqual(x["tokens_seen"], y["tokens_seen"])
            self.assertEqual(x["lr"], y["lr"])
            # the step's last micro-batch is rank 1's: its routing is what rank 0 logs
            self.assertEqual(x["routing"]["layers"][0]["load"], y["routing"]["layers"][0]["load"])
        with open(os.path.join(self.single, "checkpoint-000006", "trainer_state.json")) as f:
            one = json.load(f)
        with open(os.path.join(run, "checkpoint-000006", "trainer_state.json")) as f:
            two = json.load(f)
        self.assertEqual(one["loader"], two["loader"])
        self.assertEqual(two["run"]["gradAccum"], 2)  # the global micro-batches: mhmoe resumes it on one GPU
        # written once, by rank 0: one checkpoint, no temporary leftovers, the lock gone
        self.assertEqual(sorted(os.listdir(run)), ["checkpoint-000006", "latest", "metrics.jsonl"])

    def test_ddp_on_two_ranks_equals_one_process(self):
        run = os.path.join(self.tmp.name, "ddp")
        res = launch(2, *self.common, "--out", run)
        self.assertEqual(res.returncode, 0, res.stderr[-3000:])
        self.assertSameCurve(run)
        # and a single process continues the 2-rank run as it continues its own
        again = [os.path.join(self.tmp.name, n) for n in ("single2", "ddp2")]
        for src, dst in zip((self.single, run), again):
            shutil.copytree(src, dst)
            res = train("--resume", dst, "--steps", 8)
            self.assertEqual(res.returncode, 0, res.stderr)
        a, b = (metrics(d)[-1] for d in again)
        self.assertEqual(a["step"], 8)
        self.assertAlmostEqual(a["loss"], b["loss"], delta=1e-5 * a["loss"])

    def test_fsdp_on_two_ranks_equals_one_process(self):
        if torch.cuda.device_count() < 2:
            self.skipTest("FSDP in PyTorch 1.13 runs on CUDA only (\"FSDP does not support CPU only execution\"); "
                          "this machine has fewer than 2 GPUs")
        run = os.path.join(self.tmp.name, "fsdp")
        res = launch(2, *self.common, "--out", run, "--fsdp", "--device", "cuda")
        self.assertEqual(res.returncode, 0, res.stderr[-3000:])
        self.assertSameCurve(run)

    def test_ctrl_c_finishes_the_step_and_writes_a_checkpoint(self):
        run = os.path.join(self.tmp.name, "interrupted")
        cmd = [PYTHON, os.path.join(INTEROP_DIR, "train_torch.py"), *map(str, self.common), "--steps", "10000", "--out", run]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            first = json.loads(p.stdout.readline())  # a step is done: interrupt the run
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=120)
        finally:
            p.kill()
        self.assertEqual(p.returncode, 0, err)
        saved = json.loads(out.strip().splitlines()[-1])
        self.assertGreaterEqual(saved["step"], first["step"])
        self.assertIn(f"stopped after step {saved['step']}", err)
        rows = metrics(run)
        self.assertEqual(rows[-1]["step"], saved["step"])
        res = train("--resume", run, "--stop-at", saved["step"] + 1)
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertEqual(metrics(run)[-1]["step"], saved["step"] + 1)

    def test_resume_keeps_the_fixed_options(self):
        res = train("--resume", self.single, "--batch-size", 4)
        self.assertEqual(res.returncode, 1)
        self.assertIn("--batch-size cannot change when resuming", res.stderr)
        self.assertEqual(len(res.stderr.strip().splitlines()), 1)
        res = train("--resume", self.single, "--stop-at", 3)
        self.assertEqual(res.returncode, 1)
        self.assertIn("already at step 6", res.stderr)


class TorchCompatTest(unittest.TestCase):
    def test_fsdp_imports_and_the_launcher_parses_its_defaults(self):
        code = ("import sys; sys.path.insert(0, %r); import torch_compat; torch_compat.allow_fsdp_import(); "
                "torch_compat.fix_launcher(); from torch.distributed.fsdp import FullyShardedDataParallel; "
                "from torch.distributed.elastic.multiprocessing.api import Std; "
                "assert Std.from_str('0') == Std.NONE and Std.from_str('3') == Std.ALL; "
                "assert Std.from_str('0:1,1:3') == {0: Std.OUT, 1: Std.ALL}; print('ok')") % INTEROP_DIR
        res = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=120)
        self.assertEqual(res.stdout.strip(), "ok", res.stderr[-2000:])

    def test_masked_decay_is_adamws_decay_on_matrices(self):
        # What --fsdp does on flat shards (decay by a 0/1 mask, AdamW with weight_decay 0), on whole
        # parameters here, against the two parameter groups of one process and DDP: the same numbers.
        from data_parallel import masked_decay
        from parity import make_adamw
        from testutil import tiny_model
        import argparse
        a, b = tiny_model(tiny_config("mhmoe-v1")), tiny_model(tiny_config("mhmoe-v1"))
        hp = argparse.Namespace(weight_decay=0.1, lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8)
        opt_a = make_adamw(a, hp)
        opt_b = torch.optim.AdamW(b.parameters(), lr=hp.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, foreach=False)
        masks = [torch.full_like(p, 1.0 if p.ndim >= 2 else 0.0) for p in b.parameters()]
        g = torch.Generator().manual_seed(3)
        for _ in range(3):
            for pa, pb in zip(a.parameters(), b.parameters()):
                pa.grad = torch.randn(pa.shape, generator=g)
                pb.grad = pa.grad.clone()
            opt_a.step()
            masked_decay(list(b.parameters()), masks, hp.lr, hp.weight_decay)
            opt_b.step()
        for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
            self.assertTrue(torch.equal(pa, pb), name)


if __name__ == "__main__":
    unittest.main()
