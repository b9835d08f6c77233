/** Learning-rate schedules: linear warmup from 0, then cosine, linear or constant decay to minLr. */
export type ScheduleKind = "cosine" | "linear" | "constant";

export interface Schedule {
  kind: ScheduleKind;
  lr: number;
  minLr: number;
  warmup: number;
  steps: number;
}

/** LR for 1-based optimizer step t (as in nanoGPT/llm.c: step t uses lr(t-1) of a 0-based schedule). */
export function learningRate(s: Schedule, t: number): number {
  const i = t - 1;
  if (s.warmup > 0 && i < s.warmup) return (s.lr * (i + 1)) / s.warmup;
  if (s.kind === "constant") return s.lr;
  const span = Math.max(1, s.steps - s.warmup);
  const progress = Math.min(1, Math.max(0, (i - s.warmup) / span));
  const shape = s.kind === "cosine" ? 0.5 * (1 + Math.cos(Math.PI * progress)) : 1 - progress;
  return s.minLr + (s.lr - s.minLr) * shape;
}
