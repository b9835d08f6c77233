import { shaderSource } from "./shaders.ts";

export interface KernelSpec {
  /** Name of a file in shaders/ without .wgsl (registered in src/gpu/shaders.ts). */
  shader: string;
  entry: string;
  /** WGSL `override` constants (tile sizes, workgroup sizes, layout flags). */
  constants?: Record<string, number>;
  /**
   * Template parameters for what `override` cannot express in every implementation (e.g. the element
   * count of a workgroup array, a binding's element type): each `{{NAME}}` in the source is replaced by
   * the value; `{{NAME:default}}` takes the default where the spec gives none. A value "f16" (a storage
   * type, see storageTypes) makes the module start with `enable f16;`.
   */
  template?: Record<string, number | string>;
}

export interface Kernel {
  readonly name: string;
  readonly pipeline: GPUComputePipeline;
  readonly layout: GPUBindGroupLayout;
}

/** A shader compile or pipeline error, naming the shader, the entry point and Dawn's message (with line). */
export class ShaderError extends Error {
  constructor(name: string, message: string) {
    super(`shader ${name}: ${message}`);
    this.name = "ShaderError";
  }
}

function specKey(spec: KernelSpec): string {
  const sorted = (o?: Record<string, unknown>) => (o ? Object.keys(o).sort().map((k) => `${k}=${o[k]}`).join(",") : "");
  return `${spec.shader}:${spec.entry}|${sorted(spec.constants)}|${sorted(spec.template)}`;
}

export function applyTemplate(source: string, template: Record<string, number | string> | undefined, name: string): string {
  const out = source.replace(/\{\{(\w+)(?::(\w+))?\}\}/g, (_, key: string, fallback: string | undefined) => {
    const v = template?.[key] ?? fallback;
    if (v === undefined) throw new ShaderError(name, `template parameter {{${key}}} has no value`);
    return String(v);
  });
  return usesF16(template) ? `enable f16;\n${out}` : out;
}

function usesF16(template: Record<string, number | string> | undefined): boolean {
  return !!template && Object.values(template).includes("f16");
}

/**
 * Template entries giving bindings their storage element types, e.g. storageTypes({ X_T: x }) for a
 * shader declaring `array<{{X_T:f32}}>`: "f16" for f16 tensors, else "f32". Shaders load such a binding
 * through f32(...) and store through {{X_T}}(...), so f32 stays the arithmetic type either way.
 */
export function storageTypes(tensors: Record<string, { dtype: string } | undefined>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, t] of Object.entries(tensors)) out[k] = t?.dtype === "f16" ? "f16" : "f32";
  return out;
}

/**
 * Pipelines are compiled once per (shader, entry, specialisation) and cached for the process. Compilation
 * runs inside a validation error scope because bun-webgpu does not implement getCompilationInfo.
 */
export class KernelCache {
  private cache = new Map<string, Promise<Kernel>>();
  private modules = new Map<string, GPUShaderModule>();

  constructor(private device: GPUDevice) {}

  get(spec: KernelSpec): Promise<Kernel> {
    const key = specKey(spec);
    let k = this.cache.get(key);
    if (!k) {
      k = this.build(spec, key);
      this.cache.set(key, k);
      k.catch(() => this.cache.delete(key));
    }
    return k;
  }

  get size(): number {
    return this.cache.size;
  }

  /**
   * Compiles and links one kernel. A failure is tried once more from scratch before it is reported: a
   * genuine error in the WGSL fails the same way twice, while the rare garbled request of bun-webgpu's
   * FFI (see acquireGpu) does not.
   */
  private async build(spec: KernelSpec, key: string): Promise<Kernel> {
    try {
      return await this.buildOnce(spec, key);
    } catch (e) {
      if (!(e instanceof ShaderError)) throw e;
      this.modules.clear();
      return this.buildOnce(spec, key);
    }
  }

  private async buildOnce(spec: KernelSpec, key: string): Promise<Kernel> {
    const name = `${spec.shader}.wgsl:${spec.entry}`;
    const code = applyTemplate(shaderSource(spec.shader), spec.template, name);
    const moduleKey = `${spec.shader}|${code.length}|${JSON.stringify(spec.template ?? {})}`;
    this.device.pushErrorScope("validation");
    let module = this.modules.get(moduleKey);
    if (!module) {
      module = this.device.createShaderModule({ code, label: spec.shader });
      this.modules.set(moduleKey, module);
    }
    const compileError = await this.device.popErrorScope();
    if (compileError) {
      this.modules.delete(moduleKey);
      throw new ShaderError(name, compileError.message.trim());
    }
    this.device.pushErrorScope("validation");
    const pipeline = this.device.createComputePipeline({
      label: key,
      layout: "auto",
      compute: { module, entryPoint: spec.entry, constants: spec.constants },
    });
    const pipelineError = await this.device.popErrorScope();
    if (pipelineError) throw new ShaderError(name, pipelineError.message.trim());
    return { name, pipeline, layout: pipeline.getBindGroupLayout(0) };
  }
}
