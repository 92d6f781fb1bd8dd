import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Each test file in its own process: lab names carry the pid, and a crash in one file
    // cannot take the teardown of another with it.
    pool: "forks",
    // Two cores: lab tests that move real traffic should not fight each other for CPU.
    maxWorkers: 2,
    testTimeout: 60_000,
    hookTimeout: 120_000,
  },
});
