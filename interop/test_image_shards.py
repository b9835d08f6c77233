"""Image-text shard sets in Python (no PyTorch needed): shard_writer.py writes them, arrow_shards.py reads
them back with their token_type_ids, and reads the ones `mhmoe tokenize --images` writes.
/usr/bin/python3 -m unittest discover -s interop -p 'test_image_shards.py'"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from arrow_shards import ShardError, ShardReader, open_shard_set, read_rows  # noqa: E402
from shard_writer import (END_OF_STREAM, image_text_document, record_batch_message, schema_message,  # noqa: E402
                          write_shard_set)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUN = os.path.join(ROOT, "node_modules", ".bin", "bun")
IMAGES = {"codebook": "my-visual-tokenizer", "codebook_sha256": None, "patch": 16, "size": 64, "codes": 100}


def documents(rows):
    """Joins read_rows(..., with_types=True) into (ids, types) per document."""
    docs, ids, types = [], [], []
    for r_ids, r_types, _continuation, ends in rows:
        ids.extend(r_ids.tolist())
        types.extend([0] * len(r_ids) if r_types is None else r_types.tolist())
        if ends:
            docs.append((ids, types))
            ids, types = [], []
    return docs


class ImageShardsTest(unittest.TestCase):
    def test_write_then_read_back_with_types_and_continuation_rows(self):
        pairs = [image_text_document(np.arange(16) * (i + 1) % 100, list(f"caption {i}".encode()), 257) for i in range(6)]
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "set")
            index = write_shard_set(out, pairs, val_fraction=0.25, images=IMAGES, row_tokens=7, shard_tokens=40)
            self.assertEqual(index["vocab_size"], 258 + 100)
            self.assertEqual(index["images"]["image_token_offset"], 258)
            self.assertEqual(index["images"]["mask_token_id"], 257)
            self.assertEqual(index["images"]["type_column"], "token_type_ids")
            s = open_shard_set(out)
            self.assertEqual(s.vocab_size, 358)
            self.assertEqual(s.images["codebook"], "my-visual-tokenizer")
            self.assertGreater(len(s.splits["train"]), 1)  # shard_tokens=40: a pair goes on in the next shard
            train = documents(read_rows(s, "train", with_types=True))
            val = documents(read_rows(s, "val", with_types=True))
            val_units = [i for i in range(6) if int(i * 0.25 + 0.5) < int((i + 1) * 0.25 + 0.5)]
            self.assertEqual(len(val), len(val_units))
            want = [pairs[i] for i in range(6) if i not in val_units]
            self.assertEqual([d[0] for d in train], [w[0].tolist() for w in want])
            self.assertEqual([d[1] for d in train], [w[1].tolist() for w in want])
            self.assertTrue(all(t == [1] * 16 + [0] * (len(ids) - 16) for ids, t in train))

    def test_text_only_sets_have_no_type_column(self):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "text")
            write_shard_set(out, [list(b"hello"), list(b"world")])
            s = open_shard_set(out)
            self.assertIsNone(s.images)
            self.assertEqual([r[1] for r in read_rows(s, "train", with_types=True)], [None, None])
            self.assertEqual([r[0].tolist() for r in read_rows(s)], [list(b"hello"), list(b"world")])

    def test_a_type_other_than_0_or_1_names_the_file_batch_and_row(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "bad.arrow")
            rows = [(np.array([1, 2], np.int32), False, np.array([1, 0])), (np.array([3], np.int32), False, np.array([2]))]
            with open(path, "wb") as f:
                f.write(schema_message("byte", 257, True) + record_batch_message(rows, True) + END_OF_STREAM)
            batch = ShardReader.open(path, 257).read(0)
            self.assertEqual(batch.values.tolist(), [1, 2, 3])
            with self.assertRaises(ShardError) as cm:
                _ = batch.types
            self.assertEqual(str(cm.exception), f"{path}: token type 2 (record batch 0, row 1) is not 0 (text) or 1 (image)")

    def test_index_json_images_is_checked(self):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "set")
            write_shard_set(out, [image_text_document([1, 2], [65], 257)], images=IMAGES)
            with open(os.path.join(out, "index.json")) as f:
                index = json.load(f)
            index["images"]["mask_token_id"] = 256
            with open(os.path.join(out, "index.json"), "w") as f:
                json.dump(index, f)
            with self.assertRaises(ShardError) as cm:
                open_shard_set(out)
            self.assertIn('field "images.mask_token_id" must be 257', str(cm.exception))

    @unittest.skipUnless(os.path.exists(BUN), "needs the checkout's bun (scripts/setup.sh)")
    def test_reads_what_mhmoe_tokenize_images_writes(self):
        mhmoe = [BUN, os.path.join(ROOT, "cli", "mhmoe.ts")]
        with tempfile.TemporaryDirectory() as tmp:
            def run(*args):
                subprocess.run(mhmoe + list(args), cwd=tmp, check=True, capture_output=True)
            run("data", "shapes", "--out", "shapes", "--n", "6", "--seed", "2")
            run("codebook", "--images", "shapes", "--patch", "8", "--size", "32", "--codes", "8", "--out", "cb.safetensors")
            run("tokenize", "--images", "shapes", "--captions", "shapes/captions.jsonl", "--codebook", "cb.safetensors",
                "--out", "shards", "--val-fraction", "0")
            s = open_shard_set(os.path.join(tmp, "shards"))
            self.assertEqual(s.vocab_size, 258 + 8)
            with open(os.path.join(tmp, "shapes", "captions.jsonl")) as f:
                captions = [json.loads(line)["caption"] for line in f]
            docs = documents(read_rows(s, "train", with_types=True))
            self.assertEqual(len(docs), 6)
            for (ids, types), caption in zip(docs, captions):
                self.assertTrue(all(258 <= i < 266 for i in ids[:16]))
                self.assertEqual(ids[16:], list(caption.encode("utf-8")))
                self.assertEqual(types, [1] * 16 + [0] * len(caption.encode("utf-8")))


if __name__ == "__main__":
    unittest.main()
