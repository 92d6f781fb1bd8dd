import pino, { type Logger } from "pino";

export type { Logger };

/** JSON lines by default; readable lines when stdout is a terminal. */
export function createLogger(level: string, name = "vxmesh"): Logger {
  if (process.stdout.isTTY) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const pretty = require("pino-pretty") as (opts: object) => NodeJS.WritableStream;
    return pino({ name, level }, pretty({ colorize: true, translateTime: "HH:MM:ss.l", ignore: "pid,hostname" }));
  }
  return pino({ name, level, base: { pid: process.pid } });
}
