"""Command line tests for parity.py and train_torch.py (run as the TypeScript suite will)."""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import unittest

import torch

from safetensors_io import load_pretrained, read_safetensors, save_pretrained, write_safetensors
from testutil import INTEROP_DIR, PYTHON, tiny_batch, tiny_config, tiny_model


def run_script(name, *args):
    return subprocess.run([PYTHON, os.path.join(INTEROP_DIR, name), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


class ParityScriptTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        self.ckpt = os.path.join(self.dir, "ckpt")
        # xmoe router (learnable temperature, no decay), capacity dropping, shared expert
        self.config = tiny_config("mhmoe-v1", shared=8, capacity_factor=1.0,
                                  router_z_loss_coef=0.01)
        self.model = tiny_model(self.config)
        save_pretrained(self.model, self.ckpt)
        self.ids = tiny_batch(self.config, batch=2, seq=8)
        self.batch = os.path.join(self.dir, "batch.safetensors")
        write_safetensors(self.batch, {"input_ids": self.ids.to(torch.int32)})
        self.out = os.path.join(self.dir, "out.safetensors")

    def tearDown(self):
        self.tmp.cleanup()

    def test_one_step_outputs_match_autograd_and_adamw(self):
        lr, wd, eps = 1e-2, 0.1, 1e-8
        res = run_script("parity.py", "--checkpoint", self.ckpt, "--batch", self.batch,
                         "--out", self.out, "--lr", lr, "--weight-decay", wd, "--eps", eps)
        self.assertEqual(res.returncode, 0, res.stderr)
        lines = res.stdout.strip().splitlines()
        self.assertEqual(len(lines), 1)
        summary = json.loads(lines[0])
        out, _ = read_safetensors(self.out)
        names = [n for n, _ in self.model.named_parameters()]
        expected_keys = {"logits", "loss.ce", "loss.aux", "loss.z", "loss.total", "grad_norm.step0", "lr.step0"}
        expected_keys |= {f"grad.{n}" for n in names} | {f"param.{n}" for n in names}
        self.assertEqual(set(out), expected_keys)
        self.assertTrue(all(t.dtype == torch.float32 for t in out.values()))
        self.assertEqual(tuple(out["logits"].shape), (2, 8, self.config.vocab_size))
        self.assertEqual(tuple(out["loss.total"].shape), (1,))

        ref = self.model(self.ids[:, :-1], labels=self.ids[:, 1:], training=True)
        ref.loss_total.backward()
        # The script runs the same f32 model: logits, losses and gradients measured exact, so each is
        # allowed a few ulp; the AdamW step measured max abs 6.0e-8.
        self.assertTrue(torch.allclose(out["logits"], ref.logits, atol=1e-6, rtol=0))
        for key, value in (("loss.ce", ref.loss_ce), ("loss.aux", ref.loss_aux),
                           ("loss.z", ref.loss_z), ("loss.total", ref.loss_total)):
            self.assertAlmostEqual(out[key].item(), value.item(), delta=1e-6, msg=key)
        self.assertAlmostEqual(summary["loss_total"], ref.loss_total.item(), delta=1e-6)
        self.assertGreater(out["loss.aux"].item(), 0)
        self.assertGreater(out["loss.z"].item(), 0)
        for name, p in self.model.named_parameters():
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            self.assertTrue(torch.allclose(out[f"grad.{name}"], g, atol=1e-9, rtol=1e-6), name)
            # AdamW step 1 with bias correction: update = g / (|g| + eps), decay on ndim >= 2
            decay = wd if p.ndim >= 2 else 0.0
            expected = p.detach() * (1 - lr * decay) - lr * g / (g.abs() + eps)
            self.assertTrue(torch.allclose(out[f"param.{name}"], expected, atol=3e-7, rtol=0), name)
        temperature = "model.layers.1.mlp.gate.temperature"
        self.assertNotEqual(out[f"grad.{temperature}"].item(), 0.0)

    def test_several_steps_record_each_loss(self):
        res = run_script("parity.py", "--checkpoint", self.ckpt, "--batch", self.batch,
                         "--out", self.out, "--lr", "3e-3", "--steps", "3")
        self.assertEqual(res.returncode, 0, res.stderr)
        out, _ = read_safetensors(self.out)
        losses = [out[f"loss.total.step{i}"].item() for i in range(3)]
        self.assertEqual(losses[0], out["loss.total"].item())
        self.assertLess(losses[2], losses[0])  # same batch: the steps must fit it better
        self.assertNotIn("loss.total.step3", out)

    def test_user_errors_are_one_line_and_leave_no_output(self):
        bad_batch = os.path.join(self.dir, "bad.safetensors")
        write_safetensors(bad_batch, {"input_ids": torch.zeros(2, 4)})
        with open(os.path.join(self.ckpt, "config.json")) as f:
            config = json.load(f)
        config["hidden_size"] = 32
        wrong = os.path.join(self.dir, "wrong")
        os.makedirs(wrong)
        os.link(os.path.join(self.ckpt, "model.safetensors"), os.path.join(wrong, "model.safetensors"))
        with open(os.path.join(wrong, "config.json"), "w") as f:
            json.dump(config, f)
        cases = [(os.path.join(self.dir, "nope"), self.batch, "config.json"),
                 (self.ckpt, bad_batch, "input_ids must be I32/I64"),
                 (wrong, self.batch, "model.embed_tokens.weight has shape [37, 16]")]
        for ckpt, batch, message in cases:
            with self.subTest(message=message):
                res = run_script("parity.py", "--checkpoint", ckpt, "--batch", batch,
                                 "--out", self.out)
                self.assertEqual(res.returncode, 1)
                self.assertEqual(res.stdout, "")
                self.assertEqual(len(res.stderr.strip().splitlines()), 1, res.stderr)
                self.assertIn(message, res.stderr)
                self.assertFalse(os.path.exists(self.out))


class TrainScriptTest(unittest.TestCase):
    def test_trains_logs_json_and_saves_a_loadable_checkpoint(self):
        with tempfile.TemporaryDirectory() as tmp:
            config = tiny_config("mhmoe", vocab_size=260, max_position_embeddings=32)
            model = tiny_model(config, std=0.05)
            save_pretrained(model, os.path.join(tmp, "ckpt"))
            text = os.path.join(tmp, "corpus.txt")
            with open(text, "w", encoding="utf-8") as f:
                f.write("the quick brown fox jumps over the lazy dog. " * 20 + "héllo\n")
            saved = os.path.join(tmp, "saved")
            res = run_script("train_torch.py", "--checkpoint", os.path.join(tmp, "ckpt"),
                             "--data", text, "--steps", 6, "--batch-size", 2, "--seq-len", 16,
                             "--lr", "1e-2", "--warmup", 0, "--log-every", 1, "--save", saved)
            self.assertEqual(res.returncode, 0, res.stderr)
            records = [json.loads(line) for line in res.stdout.splitlines()]
            steps = [r for r in records if "step" in r]
            self.assertEqual([r["step"] for r in steps], [1, 2, 3, 4, 5, 6])
            for r in steps:
                self.assertGreater(r["tokens_per_s"], 0)
                self.assertTrue(r["loss"] > 0)
                # mhmoe train's fields: loss is the cross-entropy alone, the router losses apart
                self.assertEqual(set(r), {"step", "loss", "aux_loss", "z_loss", "lr", "grad_norm", "tokens_per_s",
                                          "tokens_seen"})
                self.assertEqual(r["tokens_seen"], r["step"] * 2 * 16)
            self.assertLess(steps[-1]["loss"], steps[0]["loss"])
            self.assertEqual(records[-1], {"saved": saved})
            reloaded = load_pretrained(saved)
            self.assertEqual(reloaded.config, config)
            before = dict(model.named_parameters())["model.embed_tokens.weight"]
            after = dict(reloaded.named_parameters())["model.embed_tokens.weight"]
            self.assertFalse(torch.equal(before, after))

            res = run_script("train_torch.py", "--checkpoint", os.path.join(tmp, "ckpt"),
                             "--data", text, "--steps", 1, "--batch-size", 64, "--seq-len", 32)
            self.assertEqual(res.returncode, 1)
            self.assertIn("data has", res.stderr)
            self.assertEqual(len(res.stderr.strip().splitlines()), 1)


class TrainScriptTrapsTest(unittest.TestCase):
    """What a first PyTorch session trips on: no torch, a GPT-2 checkpoint, no CUDA."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.ckpt = os.path.join(self.tmp.name, "ckpt")
        save_pretrained(tiny_model(tiny_config("mhmoe", vocab_size=260, max_position_embeddings=32)), self.ckpt)
        self.text = os.path.join(self.tmp.name, "corpus.txt")
        with open(self.text, "w", encoding="utf-8") as f:
            f.write("the quick brown fox jumps over the lazy dog. " * 10)
        self.save = os.path.join(self.tmp.name, "saved")

    def tearDown(self):
        self.tmp.cleanup()

    def train(self, *flags, python_flags=()):
        return subprocess.run([PYTHON, *python_flags, os.path.join(INTEROP_DIR, "train_torch.py"),
                               "--checkpoint", self.ckpt, "--data", self.text, "--steps", "2",
                               "--batch-size", "2", "--seq-len", "8", "--save", self.save, *flags],
                              capture_output=True, text=True, timeout=120)

    def record_tokenizer(self, name):
        with open(os.path.join(self.ckpt, "trainer_state.json"), "w") as f:
            json.dump({"format": "mhmoe-trainer-state", "version": 1, "step": 3, "tokenizer": name}, f)

    def assertOneErrorLine(self, res, *parts):
        self.assertEqual(res.returncode, 1, res.stderr)
        lines = res.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, res.stderr)
        self.assertTrue(lines[0].startswith("error: "), lines[0])
        for part in parts:
            self.assertIn(part, lines[0])
        self.assertFalse(os.path.exists(self.save))

    def test_without_torch_one_line_says_how_to_pick_a_python(self):
        # -S leaves out site-packages, where Debian's python3-torch lives: a Python without torch.
        self.assertOneErrorLine(self.train(python_flags=["-S"]), "PyTorch cannot be imported by", "python3 -c 'import torch'")

    def test_a_gpt2_checkpoint_is_refused_before_training(self):
        self.record_tokenizer("gpt2")
        self.assertOneErrorLine(self.train(), 'trained on "gpt2" tokens', "byte tokenizer only")

    def test_export_keeps_the_tokenizer_record(self):
        self.record_tokenizer("byte")
        res = self.train()
        self.assertEqual(res.returncode, 0, res.stderr)
        with open(os.path.join(self.save, "trainer_state.json")) as f:
            record = json.load(f)
        self.assertEqual(record["tokenizer"], "byte")
        self.assertEqual(record["format"], "mhmoe-torch-export")
        load_pretrained(self.save)
        # The export is itself a checkpoint train_torch.py continues from.
        self.ckpt, self.save = self.save, os.path.join(self.tmp.name, "again")
        self.assertEqual(self.train().returncode, 0)

    def test_device_errors_are_one_line(self):
        self.assertOneErrorLine(self.train("--device", "gpu"), "--device gpu")
        if torch.cuda.is_available():
            self.skipTest("CUDA is available here")
        self.assertOneErrorLine(self.train("--device", "cuda"), "--device cuda", "no CUDA device")


if __name__ == "__main__":
    unittest.main()
