import { setupGlobals } from "bun-webgpu";
import { UserError } from "../util/errors.ts";
import { withNativeStderrSilenced } from "./quiet.ts";

/** Dawn's WGPUBackendType and WGPUAdapterType numbering (bun-webgpu exposes the raw enums on adapter.info). */
const BACKENDS = ["undefined", "null", "webgpu", "d3d11", "d3d12", "metal", "vulkan", "opengl", "opengles"];
const ADAPTER_TYPES = ["discrete-gpu", "integrated-gpu", "cpu", "unknown"];
const BACKEND_IDS: Record<string, number> = { d3d12: 4, metal: 5, vulkan: 6, opengl: 7, opengles: 8 };

export const NO_DRIVER_HINT =
  "no usable WebGPU adapter (Dawn found no GPU driver, only its null backend). " +
  "Install a Vulkan driver; on Debian without a GPU use Mesa's lavapipe >= 24: add the bookworm-backports " +
  "apt source and run `apt-get install -t bookworm-backports libvulkan1 mesa-vulkan-drivers` " +
  "(scripts/setup.sh does this when run as root)";

export interface AdapterDescription {
  index: number;
  name: string;
  vendor: string;
  architecture: string;
  description: string;
  backend: string;
  type: string;
}

interface Found {
  adapter: GPUAdapter;
  desc: AdapterDescription;
}

let globalsReady = false;
async function ensureGlobals(): Promise<void> {
  if (globalsReady) return;
  try {
    await setupGlobals();
  } catch (e) {
    throw new UserError(`cannot load the WebGPU library (bun-webgpu/Dawn): ${e instanceof Error ? e.message : e}`);
  }
  globalsReady = true;
}

function describe(adapter: GPUAdapter, index: number): AdapterDescription {
  const info = adapter.info as GPUAdapterInfo & { backendType?: number; adapterType?: number };
  const backend = BACKENDS[info.backendType ?? 0] ?? `backend-${info.backendType}`;
  const type = ADAPTER_TYPES[(info.adapterType ?? 4) - 1] ?? "unknown";
  return {
    index,
    name: info.device || info.description || "unnamed",
    vendor: info.vendor ?? "",
    architecture: info.architecture ?? "",
    description: info.description ?? "",
    backend,
    type,
  };
}

function isNullBackend(d: AdapterDescription): boolean {
  return d.backend === "null" || d.name === "null-backend";
}

/**
 * WebGPU has no "list adapters" call, so we ask Dawn under every preference and backend that can yield a
 * different adapter and keep the distinct ones. The first entry is what a plain requestAdapter() returns.
 */
async function enumerate(): Promise<Found[]> {
  await ensureGlobals();
  const queries: GPURequestAdapterOptions[] = [
    {},
    { powerPreference: "high-performance" },
    { powerPreference: "low-power" },
    ...Object.values(BACKEND_IDS).map((b) => ({ backendType: b }) as GPURequestAdapterOptions),
    { forceFallbackAdapter: true },
  ];
  const found: Found[] = [];
  const seen = new Set<string>();
  await withNativeStderrSilenced(async () => {
    for (const q of queries) {
      let adapter: GPUAdapter | null = null;
      try {
        adapter = await navigator.gpu.requestAdapter(q);
      } catch {
        adapter = null;
      }
      if (!adapter) continue;
      const desc = describe(adapter, found.length);
      const key = `${desc.backend}|${desc.vendor}|${desc.name}|${desc.description}`;
      if (seen.has(key) || isNullBackend(desc)) continue;
      seen.add(key);
      found.push({ adapter, desc });
    }
  });
  return found;
}

export async function listAdapters(): Promise<AdapterDescription[]> {
  return (await enumerate()).map((f) => f.desc);
}

/**
 * Picks an adapter: `selector` (the --adapter flag or MHMOE_ADAPTER) is an index from `mhmoe inspect
 * --adapters` or a case-insensitive substring of its name, vendor, description or backend.
 */
export async function pickAdapter(selector?: string): Promise<{ adapter: GPUAdapter; desc: AdapterDescription }> {
  const all = await enumerate();
  if (all.length === 0) throw new UserError(NO_DRIVER_HINT);
  const sel = (selector ?? process.env.MHMOE_ADAPTER ?? "").trim();
  if (!sel) return all[0]!;
  if (/^\d+$/.test(sel)) {
    const hit = all[Number(sel)];
    if (!hit) throw new UserError(`adapter index ${sel} does not exist (there are ${all.length}; see \`mhmoe inspect --adapters\`)`);
    return hit;
  }
  const needle = sel.toLowerCase();
  const hit = all.find((f) =>
    [f.desc.name, f.desc.vendor, f.desc.description, f.desc.backend].some((s) => s.toLowerCase().includes(needle)),
  );
  if (!hit) {
    const names = all.map((f) => `${f.desc.index}: ${f.desc.name} (${f.desc.backend})`).join("; ");
    throw new UserError(`no adapter matches "${sel}"; available: ${names}`);
  }
  return hit;
}
