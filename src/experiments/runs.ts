/** What the experiments share about their runs: which models to train, and how far a run already got. */
import * as fs from "node:fs";
import * as path from "node:path";
import { UserError } from "../util/errors.ts";

/** The models named by --only (all of them without it); an unknown name is one error line listing the known ones. */
export function selectModels<M extends { name: string }>(whole: M[], only: string[] | undefined): M[] {
  const unknown = (only ?? []).filter((n) => !whole.some((m) => m.name === n));
  if (unknown.length > 0) throw new UserError(`--only: no model ${unknown.join(", ")} at this scale (models: ${whole.map((m) => m.name).join(", ")})`);
  return only ? whole.filter((m) => only.includes(m.name)) : whole;
}

/** The step of a run directory's latest checkpoint (0 when it has none): a rerun trains only what is missing. */
export async function finishedStep(run: string): Promise<number> {
  try {
    const latest = fs.readFileSync(path.join(run, "latest"), "utf8").trim();
    return JSON.parse(fs.readFileSync(path.join(run, latest, "trainer_state.json"), "utf8")).step ?? 0;
  } catch {
    return 0;
  }
}
