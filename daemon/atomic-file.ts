import { renameSync, writeFileSync } from "node:fs";

/** Writes a file so that readers see the old content or the new, never half of it. */
export function writeFileAtomic(file: string, text: string, mode = 0o644): void {
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, text, { mode });
  renameSync(tmp, file);
}
