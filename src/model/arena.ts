import type { Gpu } from "../gpu/device.ts";
import { empty, type DType, type Tensor } from "../gpu/tensor.ts";

/**
 * Owns the activation and scratch tensors of one plan. Saved activations get their own tensor; scratch
 * tensors (backward temporaries that no later kernel of another layer needs) are shared by label and
 * size, so all same-shaped layers reuse one set.
 */
export class Arena {
  private owned: Tensor[] = [];
  private shared = new Map<string, Tensor>();

  constructor(readonly gpu: Gpu, readonly sharedByName = false) {}

  f32(shape: number[], label: string): Tensor {
    return this.alloc(shape, "f32", label);
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
