import { configDefaults, defineConfig } from "vitest/config";

// Two projects, by what a test file needs:
//   unit  runs from the sources alone: no root, no network namespaces, no build (neither dist/
//         nor the native addon in build/Release); seconds. `npm run test:unit`.
//   lab   everything else: namespaces and real daemons (root), the built CLI in dist/, the
//         native addon, the CNI shim. `npm run test:lab` (builds first).
// `npm test` builds and runs both. A new test file is a lab test until it is listed here: list
// it as a unit test once it passes from a fresh clone without root and without a build.
const UNIT = [
  "test/bench-report.test.ts",
  "test/capabilities.test.ts",
  "test/cidr-overlap.test.ts",
  "test/cleanup-stack.test.ts",
  "test/cluster-view.test.ts",
  "test/cni-spec.test.ts",
  "test/config-file.test.ts",
  "test/config.test.ts",
  "test/deploy.test.ts",
  "test/doctor-core.test.ts",
  "test/forwarder-core.test.ts",
  "test/forwarder-loop.test.ts",
  "test/gossip-profile.test.ts",
  "test/install-cni-bridge.test.ts",
  "test/iptables-rules.test.ts",
  "test/keyring.test.ts",
  "test/kube-client.test.ts",
  "test/kube-core.test.ts",
  "test/kube-reflector.test.ts",
  "test/kube-watch-lines.test.ts",
  "test/kubeconfig.test.ts",
  "test/kubernetes-source.test.ts",
  "test/membership-sim.test.ts",
  "test/membership-wire.test.ts",
  "test/membership.test.ts",
  "test/metrics.test.ts",
  "test/netlink-codec.test.ts",
  "test/node-record.test.ts",
  "test/peer-source.test.ts",
  "test/serial.test.ts",
  "test/soak.test.ts",
  "test/spin-policy.test.ts",
  "test/subnet-allocator.test.ts",
  "test/trace.test.ts",
  "test/types.test.ts",
  "test/vxlan-codec.test.ts",
];

export default defineConfig({
  test: {
    // Each test file in its own process: lab names carry the pid, and a crash in one file
    // cannot take the teardown of another with it.
    pool: "forks",
    // Two cores: lab tests that move real traffic should not fight each other for CPU.
    maxWorkers: 2,
    testTimeout: 60_000,
    hookTimeout: 120_000,
    projects: [
      { extends: true, test: { name: "unit", include: UNIT } },
      { extends: true, test: { name: "lab", include: ["test/**/*.test.ts"], exclude: [...configDefaults.exclude, ...UNIT] } },
    ],
  },
});
