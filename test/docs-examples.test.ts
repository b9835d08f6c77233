// Every command and example in README.md, docs/*.md, interop/README.md and configs/README.md, run
// exactly as printed, in document order, one fresh directory per document. That directory stands in for the checkout: `mhmoe`,
// `src/`, `cli/`, `interop/`, ... are links to the repository's, and it holds the files the documents
// name (`my-texts/`, a folder of .txt files, and `held-out.txt`, cut from a public-domain State of the
// Union address). A PATH entry holds `mhmoe` (the wrapper) and `python3` ($MHMOE_PYTHON, default
// /usr/bin/python3, the one scripts/test.sh gives PyTorch), so `./mhmoe x`, `mhmoe x` and `python3 x` run
// as a reader of the documents would run them.
//
// Fenced blocks, by language:
//   sh       each line is a command (a trailing backslash continues it); `# exits N` at the end of a line
//            says it must exit N (a deliberate error), otherwise it must exit 0.
//   console  `$ command` lines, each followed by the output it prints: every shown line must appear, in
//            order, in the command's stdout+stderr, with any number standing for any number and `...`
//            for any text; `# exits N` as in sh.
//   ts, python  written to a file in the directory and run (bun, python3); must exit 0.
//   text     a synopsis when its first line is `mhmoe COMMAND ...`: its flags must be exactly those of
//            `mhmoe COMMAND --help`. Other text blocks (formats, outputs described elsewhere) are not run.
//   json     data, not run.
// A block with no language, or a text/json block that holds a command line, fails the test: a command
// cannot hide from it.
import { describe, test, expect, beforeAll, afterAll } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const ROOT = join(import.meta.dir, "..");
const DOCS = [
  "README.md", ...readdirSync(join(ROOT, "docs")).filter((n) => n.endsWith(".md")).sort().map((n) => `docs/${n}`),
  "interop/README.md", "configs/README.md",
];
const PYTHON = process.env.MHMOE_PYTHON ?? "/usr/bin/python3";

/**
 * Commands this suite does not run, each with the reason and what runs it instead. Keep it short: a
 * command belongs here only when it needs a machine or minutes this suite does not have.
 */
const SKIP: Record<string, string> = {
  // Installs system packages (root, apt) and trains 200 steps: CI runs setup.sh through scripts/test.sh
  // (.ci/run), and test/train-cli.test.ts runs the no-argument `mhmoe train`.
  "bash scripts/setup.sh && ./mhmoe train": "setup.sh: CI (.ci/run -> scripts/test.sh); no-argument train: test/train-cli.test.ts",
  // This is the command CI itself runs (.ci/run); it runs this file.
  "bash scripts/test.sh": "CI runs it (.ci/run)",
  // Compiles a ~100 MB binary: test/cli.test.ts builds the same (`bun build --compile cli/mhmoe.ts`) and
  // runs it from an empty directory.
  "npm run build": "test/cli.test.ts builds and runs the binary",
  // The interop unit tests: scripts/test.sh runs exactly this after bun's tests.
  "/usr/bin/python3 -m unittest discover -s interop -p 'test_*.py'": "scripts/test.sh runs it",
};

interface Step {
  kind: "sh" | "ts" | "python" | "synopsis";
  line: number;
  text: string;
  exit: number;
  /** console blocks: the lines the command must print, in order */
  output?: string[];
}

const FENCE = /^```(\S*)\s*$/;
/** A synopsis: `mhmoe COMMAND ...`, or `python3 interop/SCRIPT.py ...`. */
const SYNOPSIS = /^(mhmoe [a-z]|(\/usr\/bin\/)?python3 interop\/\w+\.py )/;
const COMMANDISH = /^(\$ |\.\/mhmoe |mhmoe |python3? |\/usr\/bin\/python3 |bash |npm )/;

/** The steps of one document, in order; throws on a block this test cannot classify. */
function parse(doc: string, markdown: string): Step[] {
  const lines = markdown.split("\n");
  const steps: Step[] = [];
  for (let i = 0; i < lines.length; i++) {
    const open = FENCE.exec(lines[i]!);
    if (!open) continue;
    const lang = open[1]!;
    const start = i + 1;
    let end = start;
    while (end < lines.length && !/^```\s*$/.test(lines[end]!)) end++;
    if (end === lines.length) throw new Error(`${doc}:${i + 1}: unclosed code block`);
    const body = lines.slice(start, end);
    i = end;
    const at = (k: number) => start + k + 1;
    if (lang === "sh") steps.push(...shellSteps(body, at));
    else if (lang === "console") steps.push(...consoleSteps(doc, body, at));
    else if (lang === "ts" || lang === "python") steps.push({ kind: lang, line: at(0), text: body.join("\n") + "\n", exit: 0 });
    else if (lang === "text" || lang === "json") {
      if (lang === "text" && SYNOPSIS.test(body[0] ?? "")) {
        const k = body.findIndex((l, j) => j > 0 && /^\S/.test(l));
        if (k > 0) throw new Error(`${doc}:${at(k)}: one synopsis per block (continuation lines indented), so each is checked`);
        steps.push({ kind: "synopsis", line: at(0), text: body.join("\n"), exit: 0 });
      }
      else {
        const k = body.findIndex((l) => COMMANDISH.test(l));
        if (k >= 0) throw new Error(`${doc}:${at(k)}: a command in a ${lang} block is never run; put it in a sh or console block`);
      }
    } else throw new Error(`${doc}:${i + 1}: code block language "${lang}" is not one this test knows (sh, console, ts, python, text, json)`);
  }
  return steps;
}

const EXITS = /#\s*exits (\d+)\b/;

/** Joins backslash continuations; drops blank and comment-only lines. */
function shellSteps(body: string[], at: (k: number) => number): Step[] {
  const steps: Step[] = [];
  for (let k = 0; k < body.length; k++) {
    const first = k;
    let cmd = body[k]!;
    while (cmd.endsWith("\\") && k + 1 < body.length) cmd = cmd.slice(0, -1) + "\n" + body[++k]!;
    if (!cmd.trim() || cmd.trim().startsWith("#")) continue;
    steps.push({ kind: "sh", line: at(first), text: cmd, exit: Number(EXITS.exec(cmd)?.[1] ?? 0) });
  }
  return steps;
}

function consoleSteps(doc: string, body: string[], at: (k: number) => number): Step[] {
  const steps: Step[] = [];
  for (let k = 0; k < body.length; k++) {
    const l = body[k]!;
    if (l.startsWith("$ ")) {
      const first = k;
      let cmd = l.slice(2);
      while (cmd.endsWith("\\") && k + 1 < body.length) cmd = cmd.slice(0, -1) + "\n" + body[++k]!;
      steps.push({ kind: "sh", line: at(first), text: cmd, exit: Number(EXITS.exec(cmd)?.[1] ?? 0), output: [] });
    } else if (l.trim()) {
      const last = steps.at(-1);
      if (!last) throw new Error(`${doc}:${at(k)}: console output before any $ command`);
      last.output!.push(l);
    }
  }
  return steps;
}

/** One shown output line as a pattern: any number stands for any number, `...` for any text. */
function linePattern(shown: string): RegExp {
  const NUM = /-?\d+(?:[.,]\d+)*(?:e[-+]?\d+)?/y;
  let re = "";
  for (let i = 0; i < shown.length; ) {
    if (shown.startsWith("...", i)) {
      re += ".*";
      i += 3;
      continue;
    }
    NUM.lastIndex = i;
    const m = NUM.exec(shown);
    if (m && (i === 0 || !/[A-Za-z_]/.test(shown[i - 1]!) || /\d/.test(m[0][0]!))) {
      re += "-?\\d+(?:[.,]\\d+)*(?:e[-+]?\\d+)?";
      i += m[0].length;
      continue;
    }
    re += shown[i]!.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    i++;
  }
  return new RegExp(`^${re}$`);
}

/** The shown lines must appear in order among the printed ones; returns the first that does not. */
function missingLine(shown: string[], printed: string[]): string | null {
  let at = 0;
  for (const s of shown) {
    if (s.trim() === "...") continue;
    const re = linePattern(s.trimEnd());
    while (at < printed.length && !re.test(printed[at]!.trimEnd())) at++;
    if (at === printed.length) return s;
    at++;
  }
  return null;
}

const SPLIT_INTO = 5;

/** `my-texts/part-1.txt` .. `part-4.txt` and `held-out.txt`: one address cut at sentence ends. */
function writeFixtures(dir: string): void {
  const text = readFileSync(join(ROOT, "test/fixtures/train/sotu-1790-washington.txt"), "utf8").trim();
  const sentences = text.split(/(?<=\.) /);
  const part = (i: number) => sentences.slice(Math.floor((i * sentences.length) / SPLIT_INTO), Math.floor(((i + 1) * sentences.length) / SPLIT_INTO)).join(" ") + "\n";
  mkdirSync(join(dir, "my-texts"));
  for (let i = 0; i < SPLIT_INTO - 1; i++) writeFileSync(join(dir, "my-texts", `part-${i + 1}.txt`), part(i));
  writeFileSync(join(dir, "held-out.txt"), part(SPLIT_INTO - 1));
}

/** The checkout's own files, linked; everything a document writes stays in `dir`. */
const CHECKOUT = ["mhmoe", "cli", "src", "shaders", "interop", "configs", "node_modules", "package.json", "tsconfig.json"];

let tmp: string;
let bin: string;
const env = () => ({ ...process.env, PATH: `${bin}:${process.env.PATH}` });

beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), "mhmoe-docs-"));
  bin = join(tmp, "bin");
  mkdirSync(bin);
  symlinkSync(join(ROOT, "mhmoe"), join(bin, "mhmoe"));
  symlinkSync(PYTHON, join(bin, "python3"));
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function run(argv: string[], cwd: string): { code: number; out: string } {
  const p = Bun.spawnSync(argv, { cwd, env: env(), stdout: "pipe", stderr: "pipe" });
  const signal = p.exitCode === null ? `\n(killed by ${p.signalCode})` : "";
  return { code: p.exitCode ?? -1, out: p.stdout.toString() + p.stderr.toString() + signal };
}

/** One command line through bash, stderr merged into stdout so the lines keep their order. */
function shell(cmd: string, cwd: string): { code: number; out: string } {
  return run(["bash", "-c", `exec 2>&1\n${cmd}`], cwd);
}

/** The --long flags a command's --help lists (--help itself aside): `mhmoe SUB --help` or `python3 SCRIPT --help`. */
function helpFlags(argv: string[], cwd: string): string[] {
  const r = run([...argv, "--help"], cwd);
  expect(r.code, r.out).toBe(0);
  return [...new Set([...r.out.matchAll(/^  (?:-\w, )?(--[a-z][a-z0-9-]*)/gm)].map((m) => m[1]!))].filter((f) => f !== "--help").sort();
}

function runStep(doc: string, s: Step, cwd: string, n: number): void {
  const where = `${doc}:${s.line}`;
  if (s.kind === "synopsis") {
    const words = s.text.split(/\s+/);
    const argv = words[0] === "mhmoe" ? [join(ROOT, "mhmoe"), ...words.slice(1, ["bench", "experiment", "data"].includes(words[1]!) ? 3 : 2)] : [join(bin, "python3"), words[1]!];
    const shown = [...new Set([...s.text.matchAll(/--[a-z][a-z0-9-]*/g)].map((m) => m[0]))].sort();
    expect(shown, `${where}: the synopsis lists the flags \`${words.slice(0, 2).join(" ")} --help\` lists`).toEqual(helpFlags(argv, cwd));
    return;
  }
  let r: { code: number; out: string };
  if (s.kind === "sh") {
    const skip = SKIP[s.text];
    if (skip !== undefined) return;
    r = shell(s.text, cwd);
  } else {
    const file = join(cwd, `example-${n}.${s.kind === "ts" ? "ts" : "py"}`);
    writeFileSync(file, s.text);
    r = s.kind === "ts" ? run([process.execPath, file], cwd) : run([join(bin, "python3"), file], cwd);
  }
  const tail = r.out.split("\n").slice(-30).join("\n");
  expect(r.code, `${where}: \`${s.text}\` exited ${r.code}, the document says ${s.exit}:\n${tail}`).toBe(s.exit);
  if (s.output?.length) {
    const missing = missingLine(s.output, r.out.split("\n"));
    expect(missing, `${where}: \`${s.text}\` did not print the line shown:\n  ${missing}\nit printed:\n${tail}`).toBeNull();
  }
}

describe("every command and example in the documents runs as printed", () => {
  test("the skip list names commands the documents print", () => {
    const printed = new Set(DOCS.flatMap((d) => parse(d, readFileSync(join(ROOT, d), "utf8")).map((s) => s.text)));
    for (const cmd of Object.keys(SKIP)) expect(printed.has(cmd), `SKIP lists \`${cmd}\`, which no document prints`).toBe(true);
  });

  test("the synopsis pattern: numbers and ... match, other text is literal", () => {
    expect(linePattern("loss 5.5755 nats | 82 tokens in 6 windows of 16").test("loss 2.7 nats | 1,880 tokens in 59 windows of 32")).toBe(true);
    expect(linePattern("done: 10 steps; checkpoint .../runs/mine/checkpoint-000010").test("done: 15 steps; checkpoint /tmp/x/runs/mine/checkpoint-000015")).toBe(true);
    expect(linePattern("loss 5.5 nats").test("loss 5.5 bits")).toBe(false);
    expect(linePattern("h=4, tokenizer gpt2").test("h=4, tokenizer byte")).toBe(false);
  });

  for (const doc of DOCS) {
    test(doc, () => {
      const steps = parse(doc, readFileSync(join(ROOT, doc), "utf8"));
      const cwd = join(tmp, doc.replace(/[/.]/g, "_"));
      mkdirSync(cwd);
      for (const name of CHECKOUT) if (existsSync(join(ROOT, name))) symlinkSync(join(ROOT, name), join(cwd, name));
      writeFixtures(cwd);
      const t0 = performance.now();
      steps.forEach((s, n) => {
        const t1 = performance.now();
        runStep(doc, s, cwd, n);
        if (process.env.MHMOE_DOCS_TIMING) console.log(`  ${((performance.now() - t1) / 1000).toFixed(1)} s  ${doc}:${s.line} ${s.text.split("\n")[0]!.slice(0, 90)}`);
      });
      if (process.env.MHMOE_DOCS_TIMING) console.log(`${doc}: ${steps.length} steps in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    }, 600_000);
  }
});
