/**
 * `mhmoe fill` (src/eval/fill.ts): each pass's choice is the CPU reference model's most confident text
 * token over the open masks, given the image's patch ids before the text; the refusals are one line.
 */
import { describe, expect, test, beforeAll, afterAll } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { presetConfig } from "../src/model/config.ts";
import { initParams } from "../src/model/params.ts";
import { saveModelCheckpoint } from "../src/model/load.ts";
import { referenceForward } from "../src/reference/model.ts";
import { writeShapes } from "../src/data/shapes.ts";
import { imageCodes, readCodebook, trainCodebook } from "../src/data/codebook.ts";
import { CLI, TINY_FIELDS } from "./fixtures/train/tiny.ts";

let tmp: string;
beforeAll(() => void (tmp = mkdtempSync(join(tmpdir(), "mhmoe-fill-"))));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const run = (...args: string[]) => {
  const p = Bun.spawnSync([process.execPath, CLI, "fill", ...args], { stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString().trim().split("\n").filter((l) => l.startsWith("error:")) };
};

describe("mhmoe fill", () => {
  test("each fill is the reference model's most confident text token over the open masks, with the image before the text", () => {
    const config = presetConfig("mhmoe", { ...TINY_FIELDS, vocab_size: 320, max_position_embeddings: 64, objective: "mlm", mask_token_id: 257, type_vocab_size: 2 });
    const params = initParams(config, 5);
    // sharpen the output layer so that near-ties (which float rounding could break either way) are unlikely
    const head = params.get("lm_head.weight")!;
    for (let i = 0; i < head.length; i++) head[i]! *= 40;
    const ckpt = join(tmp, "ckpt");
    saveModelCheckpoint(ckpt, config, params);
    const images = join(tmp, "images"), book = join(tmp, "cb.safetensors");
    writeShapes({ out: images, n: 2, seed: 1, size: 24, maxShapes: 1 });
    trainCodebook({ images, patch: 8, size: 24, codes: 8, out: book, seed: 0 });
    const image = join(images, "shape-00000.png");
    const text = "a ___ circle__";
    const r = run("--checkpoint", ckpt, "--text", text, "--image", image, "--codebook", book, "--json");
    expect(r.code, r.err.join("\n")).toBe(0);
    const out = JSON.parse(r.out);
    const codes = Array.from(imageCodes(image, readCodebook(book)), (c) => 258 + c);
    const textIds = [...new TextEncoder().encode(text)];
    expect([out.image_tokens, out.text_tokens, out.seq_len]).toEqual([9, textIds.length, 9 + textIds.length + 1]);
    const T = out.seq_len;
    const inputs = [...codes, ...textIds.map((b) => (b === 95 ? 257 : b)), 256];
    const types = inputs.map((_, t) => (t < 9 ? 1 : 0));
    const open = new Set(textIds.flatMap((b, i) => (b === 95 ? [i] : [])));
    expect(out.filled.length).toBe(open.size);
    for (const f of out.filled as { position: number; token: number; probability: number }[]) {
      const targets = inputs.map((_, t) => (t >= 9 && open.has(t - 9) ? 0 : -1));
      const fwd = referenceForward(config, params, Int32Array.from([...inputs, ...targets, ...types]), 1, T, { training: false });
      const V = config.vocab_size;
      let best = { p: -1, prob: -1, id: -1 };
      let chosenProb = -1;
      for (const p of open) {
        const row = Array.from(fwd.logits.subarray((9 + p) * V, (9 + p + 1) * V));
        const max = Math.max(...row);
        const sum = row.reduce((s, x) => s + Math.exp(x - max), 0);
        let id = 0;
        for (let v = 0; v < 257; v++) if (v !== 256 && row[v]! > row[id]!) id = v;
        const prob = Math.exp(row[id]! - max) / sum;
        if (prob > best.prob) best = { p, prob, id };
        if (p === f.position) {
          expect(id, `token at ${p}`).toBe(f.token);
          chosenProb = prob;
        }
      }
      expect(Math.abs(chosenProb - f.probability)).toBeLessThan(1e-4);
      expect(best.prob - chosenProb).toBeLessThan(1e-4); // the most confident open position (up to rounding)
      open.delete(f.position);
      inputs[9 + f.position] = f.token;
    }
    const filled = textIds.slice();
    for (const f of out.filled) filled[f.position] = f.token;
    expect(out.text).toBe(new TextDecoder().decode(Uint8Array.from(filled)));
    // without --json: the filled text alone
    const plain = run("--checkpoint", ckpt, "--text", text, "--image", image, "--codebook", book);
    expect(plain.out.trim()).toBe(out.text.trim());
  });

  test("refusals are one line: a causal checkpoint, no mask, an image without its codebook, too long", () => {
    const clm = join(tmp, "clm");
    const c = presetConfig("dense", { hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64, vocab_size: 258, max_position_embeddings: 16 });
    saveModelCheckpoint(clm, c, initParams(c, 0));
    const mlm = join(tmp, "mlm");
    const m = { ...c, objective: "mlm" as const, mask_token_id: 257 };
    saveModelCheckpoint(mlm, m, initParams(m, 0));
    const cases: [string[], RegExp][] = [
      [["--checkpoint", clm, "--text", "a _"], /^error: .*config\.json: objective "clm" is a causal model; fill needs an mlm one \(generate continues text\)$/],
      [["--checkpoint", mlm, "--text", "no masks"], /^error: the text has no "_" to fill/],
      [["--checkpoint", mlm, "--text", "a _", "--image", "x.png"], /^error: --image and --codebook go together/],
      [["--checkpoint", mlm, "--text", "a _", "--image", "x.png", "--codebook", "cb.safetensors"], /^error: .*config\.json: the model has no type embedding \(type_vocab_size 0\), so it takes no image$/],
      [["--checkpoint", mlm, "--text", "a _", "--mask-image"], /^error: --mask-image needs --image$/],
      [["--checkpoint", mlm, "--text", "a ____ text longer than sixteen"], /^error: the image and text are 32 tokens with the closing EOT, beyond the model's max_position_embeddings 16$/],
      [["--checkpoint", mlm, "--text", "a _", "--mask-char", "ab"], /^error: --mask-char must be one character, got "ab"$/],
    ];
    for (const [args, line] of cases) {
      const r = run(...args);
      expect(r.code, args.join(" ")).toBe(1);
      expect(r.err.length, args.join(" ")).toBe(1);
      expect(r.err[0]).toMatch(line);
    }
  });
});
