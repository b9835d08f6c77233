/**
 * Every WGSL source, imported as text so `bun build --compile` embeds it in the binary (no file is read
 * from a path relative to the working directory at run time). Add one line per new shaders/*.wgsl file.
 */
import matmul from "../../shaders/matmul.wgsl" with { type: "text" };
import fill from "../../shaders/fill.wgsl" with { type: "text" };
import embedding from "../../shaders/embedding.wgsl" with { type: "text" };
import activation from "../../shaders/activation.wgsl" with { type: "text" };
import loss from "../../shaders/loss.wgsl" with { type: "text" };
import norm from "../../shaders/norm.wgsl" with { type: "text" };
import rope from "../../shaders/rope.wgsl" with { type: "text" };
import elementwise from "../../shaders/elementwise.wgsl" with { type: "text" };
import attention from "../../shaders/attention.wgsl" with { type: "text" };
import attention_tiled from "../../shaders/attention_tiled.wgsl" with { type: "text" };
import attention_decode from "../../shaders/attention_decode.wgsl" with { type: "text" };
import grouped_gemm from "../../shaders/grouped_gemm.wgsl" with { type: "text" };
import adamw from "../../shaders/adamw.wgsl" with { type: "text" };
import router from "../../shaders/router.wgsl" with { type: "text" };
import dispatch from "../../shaders/dispatch.wgsl" with { type: "text" };
import aux_loss from "../../shaders/aux_loss.wgsl" with { type: "text" };
import libReduce from "../../shaders/lib/reduce.wgsl" with { type: "text" };
import libActivation from "../../shaders/lib/activation.wgsl" with { type: "text" };
import libTile from "../../shaders/lib/tile.wgsl" with { type: "text" };

export const SHADERS: Record<string, string> = {
  "lib/reduce": libReduce,
  "lib/activation": libActivation,
  "lib/tile": libTile,
  router,
  dispatch,
  aux_loss,
  grouped_gemm,
  adamw,
  matmul,
  fill,
  embedding,
  activation,
  loss,
  norm,
  rope,
  elementwise,
  attention,
  attention_tiled,
  attention_decode,
};

/**
 * A shader's source with its `// #include "lib/name"` lines replaced by those files (WGSL has no
 * includes; shared helpers live once in shaders/lib/). Each file is included at most once.
 */
export function shaderSource(name: string, included = new Set<string>()): string {
  const src = SHADERS[name];
  if (src === undefined) throw new Error(`unknown shader "${name}" (is it registered in src/gpu/shaders.ts?)`);
  included.add(name);
  return src.replace(/^\/\/ #include "([\w/]+)"[ \t]*$/gm, (_, dep: string) => (included.has(dep) ? "" : shaderSource(dep, included)));
}
