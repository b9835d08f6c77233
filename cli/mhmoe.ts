#!/usr/bin/env bun
// The mhmoe command line. Each command lives in its own small file that parses flags and calls src/.
import { Command, CommanderError } from "commander";
import pkg from "../package.json" with { type: "json" };
import { UserError } from "../src/util/errors.ts";
import { ioError } from "../src/io/atomic.ts";
import { ShaderError } from "../src/gpu/kernel.ts";
import { registerInspect } from "./inspect.ts";
import { registerBench } from "./bench.ts";
import { registerGenerate } from "./generate.ts";
import { registerFill } from "./fill.ts";
import { registerPlot } from "./plot.ts";
import { registerDashboard } from "./dashboard.ts";
import { registerExperiment } from "./experiment.ts";
import { registerTrain } from "./train.ts";
import { registerTokenize } from "./tokenize.ts";
import { registerEval } from "./eval.ts";
import { registerPlan } from "./plan.ts";
import { registerData } from "./data.ts";
import { registerCodebook } from "./codebook.ts";

export function buildProgram(): Command {
  const program = new Command("mhmoe")
    .description("Train and evaluate Multi-Head Mixture-of-Experts language models on WebGPU (WGSL kernels)")
    .version(pkg.version, "-V, --version")
    .option("--adapter <sel>", "WebGPU adapter: index or name from `mhmoe inspect --adapters` (env MHMOE_ADAPTER)")
    .showHelpAfterError("(run with --help for usage)")
    .hook("preAction", (cmd) => {
      const sel = cmd.opts().adapter as string | undefined;
      if (sel) process.env.MHMOE_ADAPTER = sel;
    });
  registerTrain(program);
  registerEval(program);
  registerTokenize(program);
  registerData(program);
  registerCodebook(program);
  registerGenerate(program);
  registerFill(program);
  registerInspect(program);
  registerPlan(program);
  registerPlot(program);
  registerDashboard(program);
  registerExperiment(program);
  registerBench(program);
  return program;
}

/** Runs the CLI; user errors print one line on stderr and exit non-zero, bugs keep their stack trace. */
export async function main(argv: string[]): Promise<number> {
  const program = buildProgram().exitOverride();
  try {
    await program.parseAsync(argv);
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode;
    if (e instanceof UserError) {
      process.stderr.write(`error: ${e.message}\n`);
      return e.exitCode;
    }
    // A kernel that does not build is a bug (ours or the driver's), but the user sees one line naming
    // it; MHMOE_DEBUG_GPU=1 keeps the whole trace.
    if (e instanceof ShaderError && !process.env.MHMOE_DEBUG_GPU) {
      process.stderr.write(`error: GPU kernel failed to build: ${e.message.split("\n")[0]} (MHMOE_DEBUG_GPU=1 shows more)\n`);
      return 1;
    }
    // Any file-system failure no call site named (it carries an errno code, usually a path) is still
    // the user's to fix: one line naming the path and the cause.
    const fsErr = e as NodeJS.ErrnoException;
    if (typeof fsErr?.code === "string" && typeof fsErr.errno === "number") {
      const why = ioError(e, fsErr.syscall ?? "access", fsErr.path ?? "a file");
      if (why instanceof UserError) {
        process.stderr.write(`error: ${why.message}\n`);
        return 1;
      }
    }
    throw e;
  }
}

if (import.meta.main) {
  const code = await main(process.argv);
  // bun-webgpu keeps native handles alive; exit explicitly once the command is done.
  process.exit(code);
}
