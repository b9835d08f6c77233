// The example configs in configs/: each is a valid model config that `mhmoe train --config` trains, and
// configs/README.md gives figures for every one of them (measured with bench/configs.sh).
import { describe, test, expect, afterAll } from "bun:test";
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { resolveConfig } from "../src/model/config.ts";
import { CLI, ROOT } from "./fixtures/train/tiny.ts";

const DIR = join(ROOT, "configs");
const files = readdirSync(DIR).filter((f) => f.endsWith(".json")).sort();
const tmp = mkdtempSync(join(tmpdir(), "mhmoe-configs-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe("configs/", () => {
  test("there are example configs, and the README has a row for each", () => {
    expect(files.length).toBeGreaterThanOrEqual(3);
    const readme = readFileSync(join(DIR, "README.md"), "utf8");
    for (const f of files) expect(readme, f).toContain(`\`${f}\``);
  });

  for (const f of files) {
    test(`${f} resolves and trains a step`, () => {
      const config = resolveConfig(JSON.parse(readFileSync(join(DIR, f), "utf8")), f);
      expect(config.vocab_size).toBeGreaterThanOrEqual(257);
      const p = Bun.spawnSync([process.execPath, CLI, "train", "--config", join(DIR, f), "--steps", "1", "--batch-size", "2", "--seq-len", "16",
        "--out", join(tmp, f)], { cwd: ROOT });
      expect(p.exitCode, p.stderr.toString()).toBe(0);
      expect(JSON.parse(readFileSync(join(tmp, f, "checkpoint-000001", "config.json"), "utf8"))).toMatchObject(JSON.parse(readFileSync(join(DIR, f), "utf8")));
    });
  }
});
