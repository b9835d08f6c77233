import { dlopen, FFIType } from "bun:ffi";

/**
 * Dawn and the Vulkan loader print driver-probing chatter straight to file descriptor 2 from native code
 * ("Found no drivers!", XDG_RUNTIME_DIR warnings). A user should see one clear line from us instead, so
 * adapter acquisition runs with fd 2 pointed at /dev/null. MHMOE_DEBUG_GPU=1 keeps the native output.
 */
type Libc = {
  open: (path: Uint8Array, flags: number) => number;
  dup: (fd: number) => number;
  dup2: (from: number, to: number) => number;
  close: (fd: number) => number;
};

let libc: Libc | null | undefined;

function loadLibc(): Libc | null {
  if (libc !== undefined) return libc;
  libc = null;
  if (process.platform !== "linux" && process.platform !== "darwin") return libc;
  const names = process.platform === "darwin" ? ["libc.dylib", "/usr/lib/libSystem.B.dylib"] : ["libc.so.6"];
  for (const name of names) {
    try {
      const { symbols } = dlopen(name, {
        open: { args: [FFIType.ptr, FFIType.i32], returns: FFIType.i32 },
        dup: { args: [FFIType.i32], returns: FFIType.i32 },
        dup2: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
        close: { args: [FFIType.i32], returns: FFIType.i32 },
      });
      libc = symbols as unknown as Libc;
      break;
    } catch {
      // try the next name; without libc we simply do not silence anything
    }
  }
  return libc;
}

export async function withNativeStderrSilenced<T>(fn: () => Promise<T>): Promise<T> {
  const c = process.env.MHMOE_DEBUG_GPU ? null : loadLibc();
  if (!c) return fn();
  const devnull = c.open(new TextEncoder().encode("/dev/null\0"), 1 /* O_WRONLY */);
  const saved = devnull >= 0 ? c.dup(2) : -1;
  if (devnull < 0 || saved < 0) return fn();
  c.dup2(devnull, 2);
  c.close(devnull);
  try {
    return await fn();
  } finally {
    c.dup2(saved, 2);
    c.close(saved);
  }
}
