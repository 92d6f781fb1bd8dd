import pino, { type Logger } from "pino";
import type { Parsed } from "../encap/types";

export type { Logger };

/** json: one JSON object per line; pretty: readable lines; auto: pretty on a terminal, else json. */
export type LogFormat = "json" | "pretty" | "auto";

export function parseLogFormat(text: string): Parsed<LogFormat> {
  return text === "json" || text === "pretty" || text === "auto" ? { ok: true, value: text } : { ok: false, error: "json, pretty or auto" };
}

/** JSON lines by default; readable lines when asked to, or when stdout is a terminal (auto). */
export function createLogger(level: string, name = "vxmesh", format: LogFormat = "auto"): Logger {
  if (format === "pretty" || (format === "auto" && process.stdout.isTTY)) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const pretty = require("pino-pretty") as (opts: object) => NodeJS.WritableStream;
    return pino({ name, level }, pretty({ colorize: process.stdout.isTTY === true, translateTime: "HH:MM:ss.l", ignore: "pid,hostname" }));
  }
  return pino({ name, level, base: { pid: process.pid } });
}
