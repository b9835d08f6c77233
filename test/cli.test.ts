import { describe, test, expect, beforeAll, afterAll } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { STOPPED, watch } from "./fixtures/watch.ts";

const ROOT = join(import.meta.dir, "..");
const CLI = join(ROOT, "cli/mhmoe.ts");

function run(args: string[], env: Record<string, string> = {}) {
  const p = Bun.spawnSync([process.execPath, CLI, ...args], { cwd: ROOT, env: { ...process.env, ...env } });
  return { code: p.exitCode, stdout: p.stdout.toString(), stderr: p.stderr.toString() };
}

describe("mhmoe CLI", () => {
  test("--help lists every toolkit command", () => {
    const r = run(["--help"]);
    expect(r.code).toBe(0);
    for (const c of ["train", "eval", "tokenize", "generate", "inspect", "plan", "bench"]) expect(r.stdout).toContain(c);
  });

  test("--version prints the package version", async () => {
    const pkg = await Bun.file(join(ROOT, "package.json")).json();
    const r = run(["--version"]);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(pkg.version);
  });

  test("inspect --adapters --json lists at least the adapter tests run on", () => {
    const r = run(["inspect", "--adapters", "--json"]);
    expect(r.code).toBe(0);
    const list = JSON.parse(r.stdout);
    expect(list.length).toBeGreaterThan(0);
    expect(list[0].backend).not.toBe("null");
    expect(typeof list[0].name).toBe("string");
  });

  test("an adapter selector that matches nothing is one clear line and exit 1", () => {
    const r = run(["--adapter", "no-such-gpu-xyz", "inspect"]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(r.stderr).toContain('no adapter matches "no-such-gpu-xyz"');
  });

  test("no Vulkan driver: one line naming the fix, non-zero exit, no stack trace", () => {
    const r = run(["inspect"], { VK_ICD_FILENAMES: "/nonexistent/icd.json", VK_DRIVER_FILES: "/nonexistent/icd.json" });
    expect(r.code).not.toBe(0);
    const lines = r.stderr.trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^error: no usable WebGPU adapter/);
    expect(lines[0]).toContain("mesa-vulkan-drivers");
    expect(r.stderr).not.toContain("    at ");
  });

  test("bench rejects a bad layout with one line", () => {
    const r = run(["bench", "matmul", "--layouts", "xx"]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe('error: --layouts: unknown layout "xx" (nn, nt, tn)');
  });

  test("bench matmul prints one JSON line per layout", () => {
    const r = run(["bench", "matmul", "--sizes", "32", "--layouts", "nn,tn", "--reps", "2"]);
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split("\n").map((l) => JSON.parse(l));
    expect(lines.map((l) => l.layout)).toEqual(["nn", "tn"]);
    for (const l of lines) expect(l.gflops).toBeGreaterThan(0);
  });
});

describe("compiled binary", () => {
  // Built once; every run is from an empty directory outside the checkout, with its own TMPDIR so the
  // default corpus is read from the binary rather than from a shard cache an earlier run left behind.
  let dir: string, bin: string;
  const tiny = ["--set", "hidden_size=32", "--set", "num_hidden_layers=2", "--set", "num_attention_heads=2",
    "--set", "intermediate_size=64", "--set", "moe_intermediate_size=16", "--set", "mhmoe_heads=2",
    "--steps", "2", "--batch-size", "2", "--seq-len", "16", "--log-every", "1"];
  const runBin = (args: string[]) => {
    const p = Bun.spawnSync([bin, ...args], { cwd: join(dir, "work"), env: { ...process.env, TMPDIR: join(dir, "tmp") } });
    return { code: p.exitCode, stdout: p.stdout.toString(), stderr: p.stderr.toString() };
  };
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "mhmoe-bin-"));
    for (const d of ["bin", "work", "tmp"]) mkdirSync(join(dir, d));
    bin = join(dir, "bin", "mhmoe");
    const build = Bun.spawnSync([process.execPath, "build", "--compile", CLI, "--outfile", bin], { cwd: ROOT });
    expect(build.exitCode, build.stderr.toString()).toBe(0);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  test("embeds the shaders and the WebGPU library", () => {
    const r = runBin(["bench", "matmul", "--sizes", "16", "--layouts", "nt", "--reps", "1"]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).layout).toBe("nt");
  });

  test("embeds the default corpus: train with no --data", () => {
    const r = runBin(["train", ...tiny, "--out", "default"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain("step 2/2");
    expect(existsSync(join(dir, "work/default/checkpoint-000002/model.safetensors"))).toBe(true);
  });

  test("embeds the GPT-2 tokenizer: tokenize, train on the shards, eval the checkpoint", () => {
    writeFileSync(join(dir, "work/a.txt"), readFileSync(join(ROOT, "test/fixtures/train/sotu-1790-washington.txt"), "utf8").slice(0, 4000));
    const tok = runBin(["tokenize", "--input", "a.txt", "--out", "shards", "--tokenizer", "gpt2"]);
    expect(tok.code, tok.stderr).toBe(0);
    // no --tokenizer, no vocab_size: both come from the shard set
    const tr = runBin(["train", ...tiny, "--data", "shards", "--out", "gpt2"]);
    expect(tr.code, tr.stderr).toBe(0);
    expect(tr.stderr).toContain("tokenizer gpt2, vocab_size 50304");
    const ev = runBin(["eval", "--checkpoint", "gpt2", "--data", "a.txt", "--json"]);
    expect(ev.code, ev.stderr).toBe(0);
    const result = JSON.parse(ev.stdout);
    // GPT-2 tokens, not bytes: about four characters each.
    expect(result.tokens).toBeGreaterThan(500);
    expect(result.tokens).toBeLessThan(1500);
    expect(result.loss).toBeGreaterThan(0);
  });

  test("Ctrl-C prints a resume command that works as printed: the binary's own path", async () => {
    const opts = { cwd: join(dir, "work"), env: { TMPDIR: join(dir, "tmp") } };
    const t = watch([bin, "train", ...tiny, "--steps", "100000", "--out", "stopped"], opts);
    await t.until(/^step 1\//);
    t.proc.kill("SIGINT");
    expect(await t.done(), t.lines.join("\n")).toBe(0);
    const [, step, , hint] = STOPPED.exec(t.lines.find((l) => STOPPED.test(l)) ?? "") ?? [];
    expect(hint, t.lines.join("\n")).toBe(`${bin} train --resume ${join(dir, "work/stopped")}`);
    const again = watch(["sh", "-c", `exec ${hint}`], opts);
    await again.until(new RegExp(`^step ${Number(step) + 1}/`));
    again.proc.kill("SIGTERM");
    expect(await again.done(), again.lines.join("\n")).toBe(0);
  });
});
