import type { Command } from "commander";
import { parseNumber } from "./flags.ts";
import { UserError } from "../src/util/errors.ts";

/** `mhmoe dashboard`: serves the run charts on a local page until Ctrl-C or SIGTERM. */
export function registerDashboard(program: Command): void {
  program
    .command("dashboard")
    .argument("<run-dirs...>", "run directories (the --out of mhmoe train); one not logging yet shows as waiting")
    .description("serve a local page with the charts of `mhmoe plot`, updated while the runs train, and their checkpoints and config")
    .option("--port <n>", "port to listen on; 0 picks a free one", "8765")
    .option("--host <addr>", "address to bind; the default serves this machine only", "127.0.0.1")
    .option("--json", 'print the address as JSON ({"url", "port"}) instead of a line')
    .action(async (dirs: string[], opts: { port: string; host: string; json?: boolean }) => {
      const port = parseNumber("--port", opts.port, true);
      if (port < 0 || port > 65535) throw new UserError(`--port: expected 0 to 65535, got ${port}`);
      if (opts.host.trim() === "") throw new UserError("--host: expected an address");
      const { startDashboard } = await import("../src/eval/dashboard.ts");
      const dash = await startDashboard({ dirs, host: opts.host, port });
      console.log(opts.json ? JSON.stringify({ url: dash.url, port: dash.port }) : `dashboard: ${dash.url}`);
      await new Promise<void>((done) => {
        process.once("SIGINT", done);
        process.once("SIGTERM", done);
      });
      await dash.stop();
    });
}
