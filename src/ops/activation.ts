/**
 * FFN activation launchers (shaders/activation.wgsl): fused SwiGLU h = silu(gate) * up and tanh GELU,
 * forward and backward, over a rows x cols window. Every operand is a Tensor (packed [rows, cols]) or a
 * View with its own offset and row stride, e.g. gate and up as the halves of one [N, 2*inner] buffer.
 * Outputs must not share a buffer with any other operand (WebGPU forbids aliasing writable bindings).
 * Any operand may be an f16 tensor (activations under mixed precision): the kernel is specialised on each
 * operand's dtype, loads widen to f32 and stores round once.
 */
import type { Gpu } from "../gpu/device.ts";
import { storageTypes } from "../gpu/kernel.ts";
import { bindSlots, grid1d, sharesMemory, uniform, type Dispatch, type Tensor } from "../gpu/tensor.ts";
import { elementwiseTuning, resolveView, type Operand, type ResolvedView } from "./elementwise.ts";

/** Slot of each operand in the entry point, in the order of the entry's parameter fields (ld0/off0, ...). */
const SLOTS: Record<string, number[]> = {
  swiglu_forward: [0, 1, 2],
  gelu_forward: [0, 2],
  swiglu_backward: [0, 1, 2, 3, 4],
  gelu_backward: [0, 1, 3],
};
const PARAMS_SLOT = 5;

async function planActivation(
  gpu: Gpu, entry: string, names: string[], operands: Operand[], outputs: number, rows: number, cols: number,
): Promise<Dispatch[]> {
  const views: ResolvedView[] = operands.map((o, i) => resolveView(`${entry} ${names[i]}`, o, rows, cols));
  for (let o = operands.length - outputs; o < operands.length; o++) {
    for (let i = 0; i < operands.length; i++) {
      if (i !== o && sharesMemory(views[i]!.tensor, views[o]!.tensor))
        throw new Error(`${entry}: output ${names[o]} shares a buffer with ${names[i]}; give it its own tensor`);
    }
  }
  const lds = [0, 1, 2, 3, 4].map((k) => views[k]?.ld ?? 0);
  const offs = [0, 1, 2, 3, 4].map((k) => views[k]?.offset ?? 0);
  const params = uniform(gpu, [rows, cols, ...lds, ...offs], `${entry}.params`);
  const slots: [number, Tensor | GPUBuffer][] = views.map((v, i) => [SLOTS[entry]![i]!, v.tensor]);
  // Each slot's storage type (S0_T .. S4_T); slots the entry does not bind count as f32, so all-f32 launches
  // of every entry share one module.
  const bySlot = new Map(views.map((v, i) => [SLOTS[entry]![i]!, v.tensor]));
  const template = storageTypes(Object.fromEntries([0, 1, 2, 3, 4].map((s) => [`S${s}_T`, bySlot.get(s)])));
  const kernel = await gpu.kernel({ shader: "activation", entry, constants: { WG: elementwiseTuning(gpu).WG }, template });
  slots.push([PARAMS_SLOT, params]);
  return [{ kernel, bindGroup: bindSlots(gpu, kernel, slots), workgroups: grid1d(rows * cols, elementwiseTuning(gpu).WG) }];
}

export interface SwigluForwardArgs {
  gate: Operand;
  up: Operand;
  /** silu(gate) * up */
  h: Operand;
  rows: number;
  cols: number;
}

export function planSwigluForward(gpu: Gpu, a: SwigluForwardArgs): Promise<Dispatch[]> {
  return planActivation(gpu, "swiglu_forward", ["gate", "up", "h"], [a.gate, a.up, a.h], 1, a.rows, a.cols);
}

export interface SwigluBackwardArgs {
  dh: Operand;
  gate: Operand;
  up: Operand;
  /** written (not accumulated): dh * up * silu'(gate) */
  dgate: Operand;
  /** written (not accumulated): dh * silu(gate); a different buffer from dgate */
  dup: Operand;
  rows: number;
  cols: number;
}

export function planSwigluBackward(gpu: Gpu, a: SwigluBackwardArgs): Promise<Dispatch[]> {
  return planActivation(gpu, "swiglu_backward", ["dh", "gate", "up", "dgate", "dup"], [a.dh, a.gate, a.up, a.dgate, a.dup], 2, a.rows, a.cols);
}

/** y = gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
export function planGeluForward(gpu: Gpu, a: { x: Operand; y: Operand; rows: number; cols: number }): Promise<Dispatch[]> {
  return planActivation(gpu, "gelu_forward", ["x", "y"], [a.x, a.y], 1, a.rows, a.cols);
}

/** dx = dy * gelu_tanh'(x), written. */
export function planGeluBackward(gpu: Gpu, a: { dy: Operand; x: Operand; dx: Operand; rows: number; cols: number }): Promise<Dispatch[]> {
  return planActivation(gpu, "gelu_backward", ["dy", "x", "dx"], [a.dy, a.x, a.dx], 1, a.rows, a.cols);
}
