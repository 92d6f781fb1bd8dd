// Where the built shim lives: build/Release/vxmesh-cni at the package root (node-gyp builds it
// at `npm ci`), found from either the sources (tests) or dist/ (the CLI).

import { existsSync } from "node:fs";
import { dirname, join } from "node:path";

export const SHIM_NAME = "vxmesh-cni";

export function shimBinaryPath(): string {
  let dir = __dirname;
  for (let i = 0; i < 4; i++) {
    const candidate = join(dir, "build", "Release", SHIM_NAME);
    if (existsSync(candidate)) return candidate;
    dir = dirname(dir);
  }
  throw new Error(`the CNI shim is not built: run \`npm ci\` or \`npx node-gyp rebuild\` (it builds build/Release/${SHIM_NAME})`);
}
