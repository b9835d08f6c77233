/** Token embedding lookup and its backward (scatter-add of rows into the table gradient). */
import { type Vec, allocLike, checkLength } from "./tensor.ts";

/** out[n, :] = table[ids[n], :]; table [V, d], out [ids.length, d]. */
export function embeddingForward<T extends Vec>(ids: Int32Array, table: T, V: number, d: number): T {
  checkLength("embedding table", table, V * d);
  const out = allocLike(table, ids.length * d);
  for (let n = 0; n < ids.length; n++) {
    const id = ids[n];
    if (id < 0 || id >= V) throw new Error(`embedding: token id ${id} at position ${n} is outside [0, ${V})`);
    out.set(table.subarray(id * d, (id + 1) * d), n * d);
  }
  return out;
}

/** dTable [V, d]: each row of dy [ids.length, d] added into the row of its token (repeats accumulate). */
export function embeddingBackward<T extends Vec>(ids: Int32Array, dy: T, V: number, d: number): T {
  checkLength("embedding dy", dy, ids.length * d);
  const dTable = allocLike(dy, V * d);
  for (let n = 0; n < ids.length; n++) {
    const row = ids[n] * d;
    for (let i = 0; i < d; i++) dTable[row + i] += dy[n * d + i];
  }
  return dTable;
}
