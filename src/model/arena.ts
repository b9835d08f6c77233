import type { Gpu } from "../gpu/device.ts";
import { elementBytes, empty, type DType, type Tensor } from "../gpu/tensor.ts";

/**
 * Owns the activation and scratch tensors of one plan. Saved activations get their own tensor; scratch
 * tensors (backward temporaries that no later kernel of another layer needs) are shared by label and
 * size, so all same-shaped layers reuse one set.
 */
export class Arena {
  private owned: Tensor[] = [];
  private shared = new Map<string, Tensor>();

  /**
   * `activations`: the storage type of act() tensors, the activations that projections read and backward
   * keeps (f16 under mixed precision); gradients, losses and the residual stream stay f32.
   */
  constructor(readonly gpu: Gpu, readonly sharedByName = false, readonly activations: "f32" | "f16" = "f32") {}

  f32(shape: number[], label: string): Tensor {
    return this.alloc(shape, "f32", label);
  }
  act(shape: number[], label: string): Tensor {
    return this.alloc(shape, this.activations, label);
  }
  /** Elements per binding-offset alignment for act() tensors: views into them start on multiples of this. */
  actAlign(): number {
    return (this.gpu.limits.minStorageBufferOffsetAlignment ?? 256) / elementBytes(this.activations);
  }
  i32(shape: number[], label: string): Tensor {
    return this.alloc(shape, "i32", label);
  }

  alloc(shape: number[], dtype: DType, label: string): Tensor {
    if (!this.sharedByName) return this.own(empty(this.gpu, shape, dtype, label));
    const key = `${label}:${shape.join("x")}:${dtype}`;
    let t = this.shared.get(key);
    if (!t) {
      t = this.own(empty(this.gpu, shape, dtype, label));
      this.shared.set(key, t);
    }
    return t;
  }

  /** Takes ownership of a tensor made elsewhere (e.g. a lookup table), so release() frees it too. */
  adopt(t: Tensor): Tensor {
    return this.own(t);
  }

  private own(t: Tensor): Tensor {
    this.owned.push(t);
    return t;
  }

  get bytes(): number {
    return this.owned.reduce((a, t) => a + t.byteLength, 0);
  }

  release(): void {
    for (const t of this.owned) t.release();
    this.owned = [];
    this.shared.clear();
  }
}
