// Where the built artefacts are: the one place that finds them from __dirname. This file runs
// either from the sources (encap/artefacts.ts, under vitest) or compiled (dist/encap/artefacts.js,
// the CLI); both are one folder below a folder below the package root, so every lookup walks up
// from here. What is built:
//   build/Release/vxmesh_native.node   the native I/O addon (node-gyp, at `npm ci`);
//   build/Release/vxmesh-cni           the CNI shim executable (node-gyp, at `npm ci`);
//   dist/<folder>/<name>.js            the compiled TypeScript (`npm run build`), which worker
//                                      threads and child processes need: they cannot load .ts.

import { existsSync } from "node:fs";
import { dirname, join } from "node:path";

/** How many folders up from here a lookup goes (encap/ or dist/encap/ → the package root). */
const LEVELS = 4;

/** `relative` in this folder or the first of its parents that has it; undefined if none does. */
function findUp(relative: string): string | undefined {
  let dir = __dirname;
  for (let i = 0; i < LEVELS; i++) {
    const candidate = join(dir, relative);
    if (existsSync(candidate)) return candidate;
    dir = dirname(dir);
  }
  return undefined;
}

/** The package root (package.json beside binding.gyp), from either the sources or dist/. */
export function packageRoot(): string {
  let dir = __dirname;
  for (let i = 0; i < LEVELS; i++) {
    if (existsSync(join(dir, "package.json")) && existsSync(join(dir, "binding.gyp"))) return dir;
    dir = dirname(dir);
  }
  throw new Error(`cannot find the vxmesh package root above ${__dirname}`);
}

const NATIVE_ADDON = join("build", "Release", "vxmesh_native.node");
export const SHIM_NAME = "vxmesh-cni";

/** build/Release/vxmesh_native.node, the native I/O addon. */
export function nativeAddonPath(): string {
  const found = findUp(NATIVE_ADDON);
  if (found === undefined) throw new Error("vxmesh native shim not built: run `npm ci` (node-gyp builds build/Release/vxmesh_native.node)");
  return found;
}

/** build/Release/vxmesh-cni, the CNI shim executable. */
export function shimBinaryPath(): string {
  const found = findUp(join("build", "Release", SHIM_NAME));
  if (found === undefined) {
    throw new Error(`the CNI shim is not built: run \`npm ci\` or \`npx node-gyp rebuild\` (it builds build/Release/${SHIM_NAME})`);
  }
  return found;
}

/**
 * The compiled script `<folder>/<name>.js` for a worker thread: beside the caller when it runs
 * from dist/, else the built copy in dist/ (tests that import the TypeScript sources use it).
 */
export function workerScript(folder: "encap" | "cni", name: string): string {
  const beside = join(__dirname, "..", folder, `${name}.js`);
  if (existsSync(beside)) return beside;
  return join(__dirname, "..", "dist", folder, `${name}.js`);
}

/** dist/<parts>: a compiled file at the package root, e.g. distPath("daemon", "cli.js"). */
export function distPath(...parts: string[]): string {
  return join(packageRoot(), "dist", ...parts);
}
