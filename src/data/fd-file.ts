/**
 * A minimal file handle over a numeric fd, shaped like what apache-arrow's reader needs (fd, stat,
 * read, close). Unlike node's FileHandle, which Bun treats as an error when it is garbage-collected
 * open, a loader that is dropped without close() just has its descriptor closed by a finalizer.
 */
import { close, fstat, open, read, type Stats } from "node:fs";
import { promisify } from "node:util";

const openAsync = promisify(open);
const fstatAsync = promisify(fstat);
const closeAsync = promisify(close);

const finalizer = new FinalizationRegistry<number>((fd) => close(fd, () => {}));

export class FdFile {
  private closed = false;

  private constructor(readonly fd: number) {
    finalizer.register(this, fd, this);
  }

  static async open(path: string): Promise<FdFile> {
    return new FdFile(await openAsync(path, "r"));
  }

  stat(): Promise<Stats> {
    return fstatAsync(this.fd);
  }

  read(buffer: Uint8Array, offset: number, length: number, position: number | null): Promise<{ bytesRead: number; buffer: Uint8Array }> {
    return new Promise((resolve, reject) =>
      read(this.fd, buffer, offset, length, position, (err, bytesRead) => (err ? reject(err) : resolve({ bytesRead, buffer }))),
    );
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    finalizer.unregister(this);
    await closeAsync(this.fd);
  }
}
