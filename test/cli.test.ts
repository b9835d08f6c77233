import { describe, test, expect } from "bun:test";
import { join } from "node:path";

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
  test("bun build --compile embeds the shaders and the WebGPU library", () => {
    const out = join(require("node:os").tmpdir(), `mhmoe-bin-${process.pid}`);
    const build = Bun.spawnSync([process.execPath, "build", "--compile", CLI, "--outfile", out], { cwd: ROOT });
    expect(build.exitCode).toBe(0);
    // Run from an unrelated directory so nothing can be found relative to the checkout.
    const r = Bun.spawnSync([out, "bench", "matmul", "--sizes", "16", "--layouts", "nt", "--reps", "1"], { cwd: "/" });
    require("node:fs").rmSync(out, { force: true });
    expect(r.exitCode).toBe(0);
    expect(JSON.parse(r.stdout.toString()).layout).toBe("nt");
  });
});
