"""Model and checkpoint tests (no TypeScript needed):
/usr/bin/python3 -m unittest discover -s interop -p 'test_*.py'"""
from __future__ import annotations

import itertools
import json
import math
import os
import struct
import subprocess
import tempfile
import unittest

import torch
import torch.nn.functional as F

from mhmoe_torch import PRESETS, ConfigError, MHMoEConfig, apply_rope, rope_cos_sin
from moe_layer import MoELayer, capacity_keep_mask, top_k_lowest_index_on_ties
from safetensors_io import (CheckpointError, decode_safetensors, encode_safetensors,
                            load_pretrained, save_pretrained)
from testutil import INTEROP_DIR, PYTHON, tiny_batch, tiny_config, tiny_model


def forward(model, ids):
    return model(ids[:, :-1], labels=ids[:, 1:], training=True)


class RoundTripTest(unittest.TestCase):
    def test_every_preset_round_trips_with_identical_logits(self):
        combos = itertools.product(PRESETS, (0, 8), (0.0, 1.0), ("silu", "gelu"))
        for preset, shared, cf, act in combos:
            with self.subTest(preset=preset, shared=shared, cf=cf, act=act):
                config = tiny_config(preset, shared=shared, capacity_factor=cf, act=act)
                model = tiny_model(config)
                ids = tiny_batch(config)
                with tempfile.TemporaryDirectory() as tmp:
                    save_pretrained(model, tmp)
                    loaded = load_pretrained(tmp)
                    with open(os.path.join(tmp, "config.json")) as f:
                        saved_config = json.load(f)
                self.assertEqual(saved_config["model_type"], "mhmoe")
                self.assertEqual(loaded.config, config)
                a, b = forward(model, ids), forward(loaded, ids)
                self.assertTrue(torch.equal(a.logits, b.logits))
                for name in ("loss_ce", "loss_aux", "loss_z", "loss_total"):
                    self.assertEqual(getattr(a, name).item(), getattr(b, name).item(), name)
                self.assertTrue(torch.isfinite(a.loss_total))
                if preset != "dense":
                    self.assertGreater(a.loss_aux.item(), 0.0)

    def test_sharded_tied_and_half_precision_checkpoints(self):
        config = tiny_config("mhmoe-v1", tie_word_embeddings=True)
        model = tiny_model(config)
        names = [n for n, _ in model.named_parameters()]
        self.assertNotIn("lm_head.weight", names)
        ids = tiny_batch(config)
        with tempfile.TemporaryDirectory() as tmp:
            save_pretrained(model, tmp, max_shard_bytes=4096)
            files = sorted(os.listdir(tmp))
            self.assertIn("model.safetensors.index.json", files)
            self.assertNotIn("model.safetensors", files)
            self.assertGreater(len([f for f in files if f.startswith("model-0")]), 1)
            loaded = load_pretrained(tmp)
            self.assertTrue(torch.equal(forward(model, ids).logits, forward(loaded, ids).logits))
        for dtype in (torch.float16, torch.bfloat16):
            with tempfile.TemporaryDirectory() as tmp:
                save_pretrained(model, tmp, dtype=dtype)
                loaded = load_pretrained(tmp)
            for (name, p), (_, q) in zip(model.named_parameters(), loaded.named_parameters()):
                self.assertTrue(torch.equal(p.to(dtype).float(), q), name)

    def test_mismatched_checkpoints_are_refused_by_name(self):
        model = tiny_model(tiny_config("smoe"))
        with tempfile.TemporaryDirectory() as tmp:
            save_pretrained(model, tmp)
            cfg_path = os.path.join(tmp, "config.json")
            with open(cfg_path) as f:
                original = json.load(f)
            cases = [
                (dict(original, tie_word_embeddings=True), "unexpected tensor lm_head.weight"),
                (dict(original, num_experts=5), "missing tensor model.layers.1.mlp.experts.4"),
                (dict(original, moe_intermediate_size=7), "config.json implies [7, 16]"),
                (dict(original, router_type="bogus"), "router_type"),
                ({k: v for k, v in original.items() if k != "hidden_size"}, "hidden_size"),
            ]
            for cfg, expected in cases:
                with self.subTest(expected=expected):
                    with open(cfg_path, "w") as f:
                        json.dump(cfg, f)
                    with self.assertRaises(CheckpointError) as ctx:
                        load_pretrained(tmp)
                    self.assertIn(expected, str(ctx.exception))
                    self.assertNotIn("\n", str(ctx.exception))


class SafetensorsFormatTest(unittest.TestCase):
    def test_file_follows_the_byte_rules(self):
        model = tiny_model(tiny_config("mhmoe", shared=8))
        with tempfile.TemporaryDirectory() as tmp:
            save_pretrained(model, tmp)
            with open(os.path.join(tmp, "model.safetensors"), "rb") as f:
                data = f.read()
        (n,) = struct.unpack("<Q", data[:8])
        self.assertEqual((8 + n) % 8, 0)
        text = data[8:8 + n].decode("utf-8")
        self.assertEqual(text, text.rstrip(" ") + " " * (len(text) - len(text.rstrip(" "))))
        self.assertTrue(text.rstrip(" ").endswith("}"))
        header = json.loads(text)
        self.assertEqual(header.pop("__metadata__"), {"format": "pt"})
        params = dict(model.named_parameters())
        self.assertEqual(set(header), set(params))
        spans = sorted(tuple(v["data_offsets"]) for v in header.values())
        self.assertEqual(spans[0][0], 0)
        for (_, end), (begin, _) in zip(spans, spans[1:]):
            self.assertEqual(end, begin)
        self.assertEqual(spans[-1][1], len(data) - 8 - n)
        mixed = encode_safetensors({"b": torch.ones(3, dtype=torch.float16), "a": torch.ones(1),
                                    "c": torch.ones(1, dtype=torch.int64), "d": torch.ones(1)})
        mixed_header = json.loads(mixed[8:8 + struct.unpack("<Q", mixed[:8])[0]])
        self.assertEqual(list(mixed_header), ["__metadata__", "c", "a", "d", "b"])
        reference = os.path.join(os.path.dirname(INTEROP_DIR), "test", "fixtures", "safetensors",
                                 "py_writer.py")  # the TypeScript suite's reference-layout writer
        if os.path.exists(reference):
            with tempfile.TemporaryDirectory() as tmp:
                subprocess.run([PYTHON, reference, tmp], check=True, capture_output=True)
                with open(os.path.join(tmp, "ref.safetensors"), "rb") as f:
                    ref = f.read()
            self.assertEqual(encode_safetensors(*decode_safetensors(ref)), ref)
        for name, info in header.items():
            self.assertEqual(info["dtype"], "F32")
            self.assertEqual(info["shape"], list(params[name].shape))
            begin, end = info["data_offsets"]
            raw = data[8 + n + begin:8 + n + end]
            values = struct.unpack(f"<{len(raw) // 4}f", raw)
            self.assertEqual(list(values), params[name].detach().reshape(-1).tolist(), name)

    def test_known_encodings_and_rejections(self):
        one = torch.ones(1)
        for dtype, bits in ((torch.float16, b"\x00\x3c"), (torch.bfloat16, b"\x80\x3f"),
                            (torch.int32, b"\x01\x00\x00\x00"), (torch.int64, b"\x01" + b"\x00" * 7)):
            raw = encode_safetensors({"x": one.to(dtype)})
            self.assertTrue(raw.endswith(bits), dtype)
            self.assertTrue(torch.equal(decode_safetensors(raw)[0]["x"], one.to(dtype)))
        good = encode_safetensors({"a": torch.arange(3.0), "b": torch.zeros(2, 0)})
        self.assertEqual(decode_safetensors(good)[0]["b"].shape, (2, 0))
        bad = [good[:-1], good + b"\x00\x00\x00\x00", struct.pack("<Q", 10 ** 12) + good[8:],
               good.replace(b'"data_offsets":[0,12]', b'"data_offsets":[0,11]')]
        for blob in bad:
            with self.assertRaises(CheckpointError):
                decode_safetensors(blob, "f.safetensors")


class RoutingTest(unittest.TestCase):
    def test_top_k_breaks_ties_by_lower_expert_index(self):
        probs = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.1, 0.3, 0.3, 0.3],
                              [0.3, 0.1, 0.3, 0.3], [0.4, 0.2, 0.2, 0.2]])
        _, experts = top_k_lowest_index_on_ties(probs, 2)
        self.assertEqual(experts.tolist(), [[0, 1], [1, 2], [0, 2], [0, 1]])
        g = torch.Generator().manual_seed(3)
        many = torch.randint(0, 3, (64, 16), generator=g).float() / 4  # heavy ties
        _, experts = top_k_lowest_index_on_ties(many, 5)
        for row, chosen in zip(many.tolist(), experts.tolist()):
            expected = sorted(range(16), key=lambda e: (-row[e], e))[:5]
            self.assertEqual(chosen, expected)

    def test_uniform_router_picks_lowest_experts_and_known_losses(self):
        config = tiny_config("mhmoe", num_experts=4, num_experts_per_tok=2)
        layer = MoELayer(config)
        torch.nn.init.zeros_(layer.gate.weight)  # every sub-token: probs exactly 1/4
        m = torch.randn(6, 16)
        _, aux, z = layer(m)
        # experts 0 and 1 hold every sub-token: E * sum_e c_e/S * P_e = 4 * 2 * (1 * 1/4) = 2
        # f32 results: measured exact and 1.8e-9 off; allowed 2 ulp of a value ~2
        self.assertAlmostEqual(aux.item(), 2.0, delta=2.5e-7)
        self.assertAlmostEqual(z.item(), math.log(4) ** 2, delta=2.5e-7)

    def test_capacity_admits_first_choices_before_second_choices(self):
        experts = torch.tensor([[0, 1], [0, 2], [0, 1], [1, 0]])
        keep = capacity_keep_mask(experts, num_experts=3, capacity=2)
        # first choices: r0->0, r1->0 admitted, r2->0 dropped, r3->1 admitted;
        # second choices: r0->1 admitted (2nd at 1), r1->2 admitted, r2->1 dropped, r3->0 dropped
        self.assertEqual(keep.tolist(), [[True, True], [True, True], [False, False], [True, False]])
        layer = MoELayer(tiny_config("smoe", capacity_factor=0.75, num_experts=3))
        self.assertEqual(layer.capacity(4), 2)  # ceil(0.75 * 2 * 4 / 3) = ceil(2.0)
        self.assertEqual(layer.capacity(5), 3)  # ceil(2.5)

    def test_dropped_assignments_contribute_nothing(self):
        config = tiny_config("smoe", capacity_factor=0.5)
        layer = MoELayer(config)
        torch.manual_seed(0)
        for p in layer.parameters():
            torch.nn.init.normal_(p, std=0.5)
        m = torch.randn(10, 16)
        out, _, _ = layer(m)
        probs = torch.softmax(layer.gate(m), dim=-1)
        gates, experts = top_k_lowest_index_on_ties(probs, 2)
        keep = capacity_keep_mask(experts, 4, layer.capacity(10))
        self.assertLess(keep.sum().item(), keep.numel())  # something was dropped
        expected = torch.zeros_like(m)
        for r, j in itertools.product(range(10), range(2)):
            if keep[r, j]:
                expected[r] += gates[r, j] * layer.experts[int(experts[r, j])](m[r:r + 1])[0]
        self.assertTrue(torch.allclose(out, expected, atol=3e-7, rtol=0))  # measured max abs 6.0e-8

    def test_single_expert_layer_equals_dense_swiglu(self):
        config = tiny_config("smoe", num_experts=1, num_experts_per_tok=1)
        layer = MoELayer(config)
        torch.manual_seed(0)
        for p in layer.parameters():
            torch.nn.init.normal_(p, std=0.5)
        self.assertFalse(hasattr(layer, "head_proj") or hasattr(layer, "merge_proj"))
        e = layer.experts[0]
        m = torch.randn(12, 16)
        dense = F.linear(F.silu(F.linear(m, e.gate_proj.weight)) * F.linear(m, e.up_proj.weight),
                         e.down_proj.weight)
        # measured exact (the same ops); allowed a few ulp of the O(1) outputs
        self.assertTrue(torch.allclose(layer(m)[0], dense, atol=5e-7, rtol=0))

    def test_gradcheck_moe_layer_in_float64(self):
        variants = [dict(preset="mhmoe", shared=6, norm_topk_prob=True),
                    dict(preset="mhmoe-v1", capacity_factor=1.0),
                    dict(preset="xmoe", act="gelu"),
                    dict(preset="smoe", capacity_factor=0.5, mhmoe_inner_residual=True)]
        for variant in variants:
            with self.subTest(**variant):
                kw = dict(variant)
                config = tiny_config(kw.pop("preset"), shared=kw.pop("shared", 0),
                                     act=kw.pop("act", "silu"), hidden_size=8,
                                     num_attention_heads=2, moe_intermediate_size=5, **kw)
                layer = MoELayer(config).double()
                torch.manual_seed(0)
                for name, p in layer.named_parameters():
                    if not name.endswith("temperature"):
                        torch.nn.init.normal_(p, std=0.7)
                names = [n for n, _ in layer.named_parameters()]
                inputs = [torch.randn(5, 8, dtype=torch.float64, requires_grad=True)]
                inputs += [p.detach().clone().requires_grad_() for p in layer.parameters()]

                def fn(m, *params):
                    out, aux, z = torch.nn.utils.stateless.functional_call(
                        layer, dict(zip(names, params)), (m,))
                    return torch.cat([out.reshape(-1), aux.reshape(1), z.reshape(1)])

                # Every column for the input; random directions (fast mode) over all parameters.
                # Worst over the 4 variants, |numerical - analytical| measured 3.3e-8 per Jacobian
                # entry and below 3e-10 for the fast-mode projections.
                frozen = [p.detach() for p in inputs[1:]]
                self.assertTrue(torch.autograd.gradcheck(
                    lambda m: fn(m, *frozen), inputs[:1], eps=1e-6, atol=2e-7, rtol=0))
                self.assertTrue(torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1.5e-9, rtol=0,
                                                         fast_mode=True))


class BackboneTest(unittest.TestCase):
    def test_rope_matches_the_elementwise_formula(self):
        d_head, theta = 8, 500.0
        x = torch.randn(1, 1, 5, d_head, dtype=torch.float64)
        cos, sin = rope_cos_sin(5, d_head, theta, torch.float64, x.device)
        y = apply_rope(x, cos, sin)[0, 0]
        half = d_head // 2
        for p, i in itertools.product(range(5), range(half)):
            angle = p * theta ** (-2 * i / d_head)
            a, b = x[0, 0, p, i].item(), x[0, 0, p, i + half].item()
            # float64: measured exact; allowed 5e-15 (a few ulp)
            self.assertAlmostEqual(y[p, i].item(), a * math.cos(angle) - b * math.sin(angle), places=14)
            self.assertAlmostEqual(y[p, i + half].item(), b * math.cos(angle) + a * math.sin(angle), places=14)

    def test_causal_and_positions_restart_per_sequence(self):
        config = tiny_config("mhmoe")  # dropless, so rows do not interact through routing
        model = tiny_model(config)
        ids = tiny_batch(config, batch=3)
        logits = model(ids).logits
        changed = ids.clone()
        changed[:, 6:] = (changed[:, 6:] + 1) % config.vocab_size
        # measured exact (masked keys add exact zeros); allowed a few ulp
        self.assertTrue(torch.allclose(model(changed).logits[:, :6], logits[:, :6], atol=1e-6, rtol=0))
        self.assertFalse(torch.allclose(model(changed).logits[:, 6:], logits[:, 6:]))
        alone = model(ids[1:2]).logits
        self.assertTrue(torch.allclose(alone[0], logits[1], atol=8e-6, rtol=0))  # measured max abs 1.5e-6

    def test_loss_is_mean_cross_entropy_plus_weighted_router_losses(self):
        config = tiny_config("xmoe", router_aux_loss_coef=0.05, router_z_loss_coef=0.01)
        model = tiny_model(config)
        ids = tiny_batch(config)
        out = forward(model, ids)
        logp = torch.log_softmax(out.logits, dim=-1)
        ce = -logp.gather(-1, ids[:, 1:, None]).mean()
        # f32 losses ~3.6: measured exact and 2.9e-7 off
        self.assertAlmostEqual(out.loss_ce.item(), ce.item(), delta=1.5e-6)
        self.assertAlmostEqual(out.loss_total.item(),
                               ce.item() + 0.05 * out.loss_aux.item() + 0.01 * out.loss_z.item(),
                               delta=1.5e-6)
        evaluated = model(ids[:, :-1], labels=ids[:, 1:], training=False)
        self.assertEqual(evaluated.loss_aux.item(), 0.0)
        self.assertEqual(evaluated.loss_total.item(), evaluated.loss_ce.item())

    def test_config_defaults_and_errors(self):
        self.assertTrue(tiny_config("mhmoe", mhmoe_head_merge=None).mhmoe_head_merge)
        self.assertFalse(tiny_config("smoe", mhmoe_head_merge=None).mhmoe_head_merge)
        base = tiny_config("smoe").to_dict()
        defaults = MHMoEConfig.from_dict({k: base[k] for k in (
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "max_position_embeddings", "intermediate_size")})
        self.assertEqual((defaults.num_experts, defaults.rope_theta, defaults.rms_norm_eps,
                          defaults.moe_layer_freq, defaults.router_aux_loss_coef),
                         (0, 10000.0, 1e-5, 2, 0.01))
        for bad, field in ((dict(base, num_experts_per_tok=9), "num_experts_per_tok"),
                           (dict(base, hidden_act="relu"), "hidden_act"),
                           (dict(base, model_type="llama"), "model_type")):
            with self.assertRaises(ConfigError) as ctx:
                MHMoEConfig.from_dict(bad)
            self.assertIn(field, str(ctx.exception))


if __name__ == "__main__":
    unittest.main()
