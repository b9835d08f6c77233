// The project's documents stand on their own: every relative link resolves inside the repository, and
// docs/model.md's field and tensor tables agree with src/model/config.ts and src/model/params.ts.
import { describe, test, expect } from "bun:test";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { CONFIG_FIELDS, PRESET_NAMES, SPEC_DEFAULTS, presetConfig, type ModelConfig } from "../src/model/config.ts";
import { parameterSpecs } from "../src/model/params.ts";

const ROOT = join(import.meta.dir, "..");
const DOCS = ["README.md", "BENCHMARKS.md", "interop/README.md", "configs/README.md", ...readdirSync(join(ROOT, "docs")).filter((n) => n.endsWith(".md")).map((n) => `docs/${n}`)];
const read = (file: string) => readFileSync(join(ROOT, file), "utf8");

/** Markdown link targets outside code: [text](target). */
function links(markdown: string): string[] {
  const prose = markdown.replace(/```[\s\S]*?```/g, "").replace(/`[^`\n]*`/g, "");
  return [...prose.matchAll(/\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)].map((m) => m[1]!);
}

/** GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens. */
const anchors = (markdown: string) =>
  new Set([...markdown.matchAll(/^#+\s+(.+)$/gm)].map((m) => m[1]!.trim().toLowerCase().replace(/[^\w\- ]/g, "").replace(/ /g, "-")));

describe("documents", () => {
  test.each(DOCS)("%s: relative links resolve inside the repository", (file) => {
    const text = read(file);
    for (const target of links(text)) {
      if (/^[a-z]+:/i.test(target)) continue; // https:, mailto:
      expect(target, `${file} links to ${target}`).not.toContain("shared/");
      const [path, anchor] = target.split("#") as [string, string | undefined];
      const abs = path ? resolve(ROOT, dirname(file), path) : join(ROOT, file);
      expect(relative(ROOT, abs).startsWith(".."), `${file} links outside the repository: ${target}`).toBe(false);
      expect(existsSync(abs), `${file} links to a missing ${target}`).toBe(true);
      if (anchor && abs.endsWith(".md")) expect(anchors(readFileSync(abs, "utf8")).has(anchor), `${file}: no heading for ${target}`).toBe(true);
    }
  });

  test("README links the model document", () => {
    expect(links(read("README.md"))).toContain("docs/model.md");
  });

  test("README starts with the two set-up commands (test/docs-examples.test.ts runs the rest as printed)", () => {
    const blocks = [...read("README.md").matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]!.trim());
    expect(blocks.slice(0, 2)).toEqual(["bash scripts/setup.sh && ./mhmoe train", "bash scripts/test.sh"]);
  });

  test.each(DOCS)("%s: names no document outside the repository", (file) => {
    expect(read(file)).not.toMatch(/MODEL_SPEC|DESIGN\.md|\.\.\/shared/);
  });
});

/** The rows of the first markdown table under `## heading` in docs/model.md, as arrays of cells. */
function table(heading: string): string[][] {
  const lines = read("docs/model.md").split("\n");
  const at = lines.indexOf(`## ${heading}`);
  expect(at, `docs/model.md has no "## ${heading}"`).toBeGreaterThan(0);
  const first = lines.findIndex((l, i) => i > at && l.startsWith("|"));
  const rows: string[] = [];
  for (let i = first; lines[i]?.startsWith("|"); i++) rows.push(lines[i]!);
  return rows.slice(2).map((r) => r.split("|").slice(1, -1).map((c) => c.trim()));
}

describe("docs/model.md", () => {
  test("lists every config field with its type and default", () => {
    const rows = table("Config fields");
    expect(rows.map((r) => r[0]!.replaceAll("`", ""))).toEqual(Object.keys(CONFIG_FIELDS));
    for (const [cell, kind, def] of rows) {
      const field = cell!.replaceAll("`", "") as keyof ModelConfig;
      expect(kind, field).toBe(CONFIG_FIELDS[field]);
      const known = (SPEC_DEFAULTS as Record<string, unknown>)[field];
      if (known !== undefined) expect(def!.replaceAll("`", ""), field).toBe(String(known));
      else expect(def, field).toMatch(/^required|^`mhmoe_heads > 1`$|^`mhmoe_head_merge`$/);
    }
  });

  test("names every checkpoint tensor, with its shape, for every preset and optional part", () => {
    const rows = table("Checkpoint tensors");
    // Each row's code spans: a full name, then `.suffix` spans that swap its last part.
    const patterns = rows.flatMap(([names, shapes]) => {
      const spans = [...names!.matchAll(/`([^`]+)`/g)].map((m) => m[1]!);
      const full = spans.map((s) => (s.startsWith(".") ? spans[0]!.replace(/\.[^.]+$/, s) : s));
      const shapeList = [...shapes!.matchAll(/\[([^\]]+)\]/g)].map((m) => m[1]!.split(",").map((x) => x.trim()));
      return full.map((n, i) => ({
        re: new RegExp("^" + n.replace(/\./g, "\\.").replace(/\{[le]\}/g, "\\d+").replace(/\{([\w,]+)\}/g, (_, alts) => `(?:${alts.split(",").join("|")})`) + "$"),
        shape: shapeList[i] ?? shapeList[0]!,
      }));
    });
    const configs = [
      ...PRESET_NAMES.map((p) => presetConfig(p)),
      presetConfig("mhmoe", { hidden_act: "gelu", tie_word_embeddings: true, shared_expert_intermediate_size: 24, intermediate_size: 40 }),
    ];
    for (const c of configs) {
      const sym: Record<string, number> = {
        V: c.vocab_size, d: c.hidden_size, I: c.intermediate_size, E: c.num_experts, d_sub: c.hidden_size / c.mhmoe_heads,
        router_dim: c.router_dim, moe_intermediate_size: c.moe_intermediate_size, shared_expert_intermediate_size: c.shared_expert_intermediate_size,
      };
      for (const spec of parameterSpecs(c)) {
        const row = patterns.find((p) => p.re.test(spec.name));
        expect(row, `${spec.name} is not in the table`).toBeDefined();
        expect(row!.shape.map((s) => sym[s] ?? Number(s)), spec.name).toEqual(spec.shape);
      }
    }
  });
});
