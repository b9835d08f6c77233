import { dirname, join, resolve } from "node:path";
import type { Command } from "commander";
import { SingleBar } from "cli-progress";
import { UserError } from "../src/util/errors.ts";
import { parseNumber } from "./flags.ts";
import { getGpu } from "../src/gpu/device.ts";
import { PRESET_NAMES, type ModelConfig } from "../src/model/config.ts";
import { modelConfig } from "../src/model/resolve.ts";
import { runOptions, TRAIN_DEFAULTS, validateTrainOptions, type TrainOptions } from "../src/train/options.ts";
import { train, parameterCount } from "../src/train/loop.ts";
import { readResumeState, resolveModelDir, type ResumeState } from "../src/train/checkpoint.ts";
import { checkResumable } from "../src/train/compat.ts";
import { dataTokenizer } from "../src/train/data.ts";
import { loadModelCheckpoint } from "../src/model/load.ts";
import { resumeCommand } from "./invocation.ts";

const collect = (v: string, prev: string[]) => [...prev, v];

function timestamp(): string {
  const d = new Date();
  const p = (n: number) => String(n).padStart(2, "0");
  return `${d.getFullYear()}${p(d.getMonth() + 1)}${p(d.getDate())}-${p(d.getHours())}${p(d.getMinutes())}${p(d.getSeconds())}`;
}

const num = (flag: string) => (v: string) => parseNumber(flag, v, false);

export function registerTrain(program: Command): void {
  program
    .command("train")
    .description("train a model on token shards, text files or the embedded default corpus")
    .option("--preset <name>", `model preset: ${PRESET_NAMES.join(", ")} (default mhmoe)`)
    .option("--config <file>", "model config.json (field names: docs/model.md)")
    .option("--set <key=value>", "override one model field (repeatable)", collect, [] as string[])
    .option("--data <path>", "shard set directory, or .txt/.jsonl files/folders (default: embedded corpus)")
    .option("--eval-data <path>", "held-out data, all of it evaluated (default: the data's val split)")
    .option("--val-fraction <f>", "text --data: the share of its tokens held out as the val split", num("--val-fraction"))
    .option("--tokenizer <name>", "byte or gpt2 (default: the shard set's, else byte)")
    .option("--out <dir>", "run directory (default ./runs/<timestamp>)")
    .option("--steps <n>", "optimizer steps", num("--steps"), TRAIN_DEFAULTS.steps)
    .option("--batch-size <n>", "sequences per micro-batch", num("--batch-size"), TRAIN_DEFAULTS.batchSize)
    .option("--seq-len <n>", "tokens per sequence", num("--seq-len"), TRAIN_DEFAULTS.seqLen)
    .option("--grad-accum <n>", "micro-batches per optimizer step", num("--grad-accum"), TRAIN_DEFAULTS.gradAccum)
    .option("--lr <x>", "peak learning rate", num("--lr"), TRAIN_DEFAULTS.lr)
    .option("--min-lr <x>", "final learning rate of the decay", num("--min-lr"), TRAIN_DEFAULTS.minLr)
    .option("--warmup <n>", "linear warmup steps", num("--warmup"), TRAIN_DEFAULTS.warmup)
    .option("--schedule <kind>", "cosine, linear or constant", TRAIN_DEFAULTS.schedule)
    .option("--weight-decay <x>", "AdamW decoupled weight decay (matrices only)", num("--weight-decay"), TRAIN_DEFAULTS.weightDecay)
    .option("--beta1 <x>", "AdamW beta1", num("--beta1"), TRAIN_DEFAULTS.beta1)
    .option("--beta2 <x>", "AdamW beta2", num("--beta2"), TRAIN_DEFAULTS.beta2)
    .option("--eps <x>", "AdamW eps", num("--eps"), TRAIN_DEFAULTS.eps)
    .option("--clip <x>", "max global gradient norm (0: no clipping)", num("--clip"), TRAIN_DEFAULTS.clip)
    .option("--seed <n>", "initialisation and data-order seed", num("--seed"), TRAIN_DEFAULTS.seed)
    .option("--log-every <n>", "steps between log lines (and loss readbacks)", num("--log-every"), TRAIN_DEFAULTS.logEvery)
    .option("--eval-every <n>", "steps between evaluations (0: never)", num("--eval-every"), TRAIN_DEFAULTS.evalEvery)
    .option("--eval-batches <n>", "an evaluation scores the first n*batch*seq-len held-out tokens (as mhmoe eval --max-tokens)", num("--eval-batches"), TRAIN_DEFAULTS.evalBatches)
    .option("--checkpoint-every <n>", "steps between checkpoints (0: only at the end)", num("--checkpoint-every"), TRAIN_DEFAULTS.checkpointEvery)
    .option("--keep <n>", "checkpoints to keep (0: all)", num("--keep"), TRAIN_DEFAULTS.keep)
    .option("--resume [dir]", "continue from the latest checkpoint of a run directory (default --out) or a checkpoint")
    .option("--init <checkpoint>", "start from a checkpoint's weights (its model config; step 0, fresh optimizer)")
    .option("--skip-nonfinite", "skip (and count) steps with a non-finite loss or gradient instead of stopping")
    .option("--recompute", "recompute norm outputs and FFN/expert hidden activations in backward: less GPU memory, same numbers")
    .option("--precision <p>", "f32, or mixed: the activations projections read and backward keeps stored in f16 (about a third less activation memory); sums, weights and gradients f32; needs shader-f16", TRAIN_DEFAULTS.precision)
    .option("--mask-unit <unit>", "mlm: mask text token by token, or whole words (byte tokenizer)", TRAIN_DEFAULTS.maskUnit)
    .option("--json", "print JSON lines on stdout")
    .action(async (raw: Record<string, unknown>, cmd: Command) => {
      const given = (name: string) => cmd.getOptionValueSource(name) === "cli";
      let resume: ResumeState | undefined;
      let base: ModelConfig | undefined;
      if (raw.resume !== undefined) {
        const from = typeof raw.resume === "string" ? raw.resume : (raw.out as string | undefined);
        if (!from) throw new UserError("--resume needs a run or checkpoint directory (or --out)");
        resume = readResumeState(from);
        base = resume.config;
        if (!raw.out) raw.out = dirname(resume.dir);
      }
      if (raw.init !== undefined) {
        if (resume) throw new UserError("--init and --resume exclude each other: --resume continues a run, --init starts one");
        base = loadModelCheckpoint(resolveModelDir(raw.init as string, "--init")).config;
      }
      const run = runOptions(raw, given, resume?.state.run);
      // The tokenizer (and the vocabulary it needs) comes from the shard set when --tokenizer is not given.
      // (A resumed run keeps its own: the checkpoint's shards are checked against it when they are opened.)
      const data = resume ? null : await dataTokenizer(run.data, given("tokenizer") ? run.tokenizer : undefined);
      if (data) run.tokenizer = data.tokenizer;
      const { config, note } = modelConfig({ preset: raw.preset as string | undefined, config: raw.config as string | undefined, set: raw.set as string[] }, data?.vocabSize ?? 0, base, data ?? undefined);
      const opts: TrainOptions = { ...run, config, out: resolve((raw.out as string | undefined) ?? join("runs", timestamp())) };
      validateTrainOptions(opts);
      if (resume) {
        // Refuse an incompatible resume before the GPU starts and the run banner is printed.
        checkResumable(resume.dir, { config: resume.config, tokenizer: resume.state.tokenizer }, opts);
        if (opts.steps <= resume.state.step) {
          const line = `nothing to do: ${resume.dir} is at step ${resume.state.step} and --steps ${opts.steps} is the run's total, not a count of more steps; ` +
            `pass --steps above ${resume.state.step} to train further`;
          if (raw.json) console.log(JSON.stringify({ event: "done", step: resume.state.step, checkpoint: resume.dir, nothing_to_do: true }));
          else process.stderr.write(line + "\n");
          return;
        }
      }
      await runTrain(opts, !!raw.json, note, resume);
    });
}

async function runTrain(o: TrainOptions, json: boolean, note: string, resume?: ResumeState): Promise<void> {
  const gpu = await getGpu();
  const tty = !json && process.stderr.isTTY;
  const bar = tty ? new SingleBar({ format: "step {value}/{total} |{bar}| loss {loss} | {tps} tok/s | ETA {eta_formatted}", hideCursor: true }) : null;
  let barStarted = false;
  const say = (obj: Record<string, unknown>, text: string) => {
    if (json) console.log(JSON.stringify(obj));
    else if (barStarted) {
      // above the bar: clear its line, print, draw it again below
      process.stderr.write("\r\x1b[2K" + text + "\n");
      bar!.render();
    } else process.stderr.write(text + "\n");
  };
  let stop = false;
  const onSignal = (sig: string) => {
    if (stop) process.exit(130);
    stop = true;
    process.stderr.write(`\n${sig}: finishing the current step and writing a checkpoint (again to quit at once)\n`);
  };
  const sigint = () => onSignal("SIGINT"), sigterm = () => onSignal("SIGTERM");
  process.on("SIGINT", sigint);
  process.on("SIGTERM", sigterm);
  // Printed once the run could start: an error before it (a taken --out, bad data, no memory) is the only line.
  const banner = (gpuBytes: number) => say({ event: "start", out: o.out, params: parameterCount(o), adapter: gpu.adapter.name, gpu_bytes: gpuBytes, precision: o.precision, tokenizer: o.tokenizer, config: o.config },
    `mhmoe train: ${parameterCount(o).toLocaleString()} parameters, ${o.config.num_experts > 0 ? `${o.config.num_experts} experts, h=${o.config.mhmoe_heads}` : "dense"}, ` +
      `tokenizer ${o.tokenizer}${note ? `, ${note}` : ""}, ${o.steps} steps of ${o.gradAccum * o.batchSize}x${o.seqLen} tokens on ${gpu.adapter.name} (${(gpuBytes / 2 ** 20).toFixed(1)} MiB of GPU memory${o.precision === "mixed" ? ", f16 activations" : ""}); run directory ${o.out}`);
  const notes: string[] = [];
  let started = false;
  try {
    const result = await train(gpu, o, {
      onStart: ({ gpuBytes }) => {
        banner(gpuBytes);
        started = true;
        for (const n of notes) say({ event: "info", message: n }, n);
      },
      onInfo: (line) => (started ? say({ event: "info", message: line }, line) : notes.push(line)),
      onStep: (r) => {
        if (bar) {
          if (!barStarted) bar.start(o.steps, 0, { loss: "-", tps: "-" });
          barStarted = true;
          bar.update(r.step, { loss: r.loss.toFixed(4), tps: Math.round(r.tokens_per_s) });
        } else {
          say({ event: "step", ...r }, `step ${r.step}/${o.steps}  loss ${r.loss.toFixed(4)}${r.masked_accuracy !== undefined ? `  masked acc ${r.masked_accuracy.toFixed(3)}` : ""}  lr ${r.lr.toExponential(2)}  grad norm ${r.grad_norm.toFixed(3)}  ${Math.round(r.tokens_per_s)} tok/s` +
            `  ${gflops(r.flops_per_s)} GFLOP/s` + (r.routing ? `  active ${r.routing.activation_ratio.toFixed(2)}` : ""));
        }
      },
      onEval: (r) => say({ event: "eval", ...r }, `step ${r.step}  eval loss ${r.eval_loss.toFixed(4)}  ppl ${r.eval_ppl.toFixed(2)}`),
      onCheckpoint: (dir, step) => say({ event: "checkpoint", step, dir }, `step ${step}: checkpoint ${dir}`),
      shouldStop: () => stop,
    }, resume);
    bar?.stop();
    barStarted = false;
    if (result.stoppedEarly) {
      const again = resumeCommand(o.out);
      say({ event: "stopped", step: result.step, checkpoint: result.checkpoint, resume: again },
        `stopped at step ${result.step}; checkpoint ${result.checkpoint}; resume with: ${again}`);
    } else {
      say({ event: "done", step: result.step, checkpoint: result.checkpoint, final_loss: result.losses.at(-1) },
        `done: ${result.step} steps, final loss ${result.losses.at(-1)?.toFixed(4)}; checkpoint ${result.checkpoint}`);
    }
  } finally {
    bar?.stop();
    process.off("SIGINT", sigint);
    process.off("SIGTERM", sigterm);
  }
}

/** Achieved GFLOP/s for the step line: always in GFLOP/s, 3 significant digits below 100. */
function gflops(flopsPerS: number): string {
  const g = flopsPerS / 1e9;
  return g >= 100 ? g.toFixed(0) : g >= 10 ? g.toFixed(1) : g.toFixed(2);
}
