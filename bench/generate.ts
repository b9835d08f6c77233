// Prints one JSON line: new tokens per second and time to the first token of `mhmoe generate`'s two
// paths (K/V cache; --no-cache: the whole prefix per token) at two prompt lengths, on a random model.
// Usage: bun bench/generate.ts [--preset mhmoe] [--set k=v ...] [--prompts 16,256] [--tokens 32] [--adapter SEL]
import { parseArgs } from "node:util";
import { getGpu } from "../src/gpu/device.ts";
import { parseSetArgs, presetConfig } from "../src/model/config.ts";
import { initParams } from "../src/model/params.ts";
import { uploadParams } from "../src/model/weights.ts";
import { getTokenizer } from "../src/data/tokenizer.ts";
import { generateTokens } from "../src/eval/generate.ts";
import { Rng } from "../src/util/rng.ts";

const { values } = parseArgs({
  options: {
    preset: { type: "string", default: "mhmoe" },
    set: { type: "string", multiple: true, default: [] },
    prompts: { type: "string", default: "16,256" },
    tokens: { type: "string", default: "32" },
    adapter: { type: "string" },
  },
});

const gpu = await getGpu({ adapter: values.adapter });
const c = presetConfig(values.preset!, parseSetArgs(values.set!));
const W = uploadParams(gpu, c, initParams(c, 0));
const noEot = { ...getTokenizer("byte"), eot: -1 }; // every run makes all its tokens
const r = new Rng(1);
const maxTokens = Number(values.tokens);
const results: Record<string, { tokens_per_s: number; first_token_s: number }> = {};
for (const cache of [true, false]) {
  for (const P of values.prompts!.split(",").map(Number)) {
    const ids = Int32Array.from({ length: P }, () => r.int(256));
    await generateTokens(gpu, c, W, ids, noEot, { temperature: 1, topK: 0, topP: 1, seed: 0, cache, maxTokens: 2 }); // warm-up
    const g = await generateTokens(gpu, c, W, ids, noEot, { temperature: 1, topK: 0, topP: 1, seed: 0, cache, maxTokens });
    results[`${cache ? "cache" : "no_cache"}_prompt_${P}`] = { tokens_per_s: Number(g.tokens_per_s.toFixed(1)), first_token_s: Number(g.first_token_s.toFixed(3)) };
  }
}
console.log(JSON.stringify({
  adapter: gpu.adapter.name, preset: values.preset, hidden_size: c.hidden_size, layers: c.num_hidden_layers,
  experts: c.num_experts, heads: c.mhmoe_heads, vocab_size: c.vocab_size, new_tokens: maxTokens, ...results,
}));
W.release();
process.exit(0);
