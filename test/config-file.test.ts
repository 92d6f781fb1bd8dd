// The --config file: YAML or JSON, keys are flag names (or camelCase), every error names the
// file, the line when the parser knows it, and the key.

import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { daemonFlags } from "../daemon/config";
import { camelCase, configFormatOf, nearMatches, parseConfigFile, readConfigFile } from "../daemon/config-file";
import type { FileLayer } from "../daemon/flags";

function layer(file: string, text: string): FileLayer {
  const r = parseConfigFile(file, text, daemonFlags);
  if (!r.ok) throw new Error(r.error);
  return r.value;
}

function error(file: string, text: string): string {
  const r = parseConfigFile(file, text, daemonFlags);
  if (r.ok) throw new Error(`expected an error for ${JSON.stringify(text)}`);
  return r.error;
}

const settings = (l: FileLayer): Record<string, string> => Object.fromEntries([...l.settings].map(([k, v]) => [k, v.text]));

describe("config file format", () => {
  it("is chosen by extension, else by content", () => {
    expect(configFormatOf("/etc/vxmesh.json", "vni: 1")).toBe("json");
    expect(configFormatOf("/etc/vxmesh.yaml", "{}")).toBe("yaml");
    expect(configFormatOf("/etc/vxmesh.YML", "{}")).toBe("yaml");
    expect(configFormatOf("/etc/vxmesh", '  {"vni": 1}')).toBe("json");
    expect(configFormatOf("/etc/vxmesh.conf", "vni: 1")).toBe("yaml");
  });

  it("reads YAML: scalars as text, lists joined, lines recorded, camelCase accepted", () => {
    const l = layer("v.yaml", [
      "# vxmesh on n1",
      "node-name: n1",
      "underlayIp: 192.0.2.11",
      "vni: 42",
      "offload: false",
      "vtep-mac: 02:00:00:00:00:01",
      "metrics-addr: off",
      "service-cidr:",
      "  - 10.96.0.0/12",
      "  - 10.100.0.0/16",
      "join: [192.0.2.12:7946, 192.0.2.13]",
    ].join("\n"));
    expect(settings(l)).toEqual({
      "node-name": "n1", "underlay-ip": "192.0.2.11", vni: "42", offload: "false", "vtep-mac": "02:00:00:00:00:01",
      "metrics-addr": "off", "service-cidr": "10.96.0.0/12,10.100.0.0/16", join: "192.0.2.12:7946,192.0.2.13",
    });
    expect(l.settings.get("underlay-ip")).toEqual({ text: "192.0.2.11", key: "underlayIp", line: 3 });
    expect(l.settings.get("service-cidr")?.line).toBe(8);
  });

  it("reads JSON the same way, with lines", () => {
    const l = layer("v.json", '{\n  "nodeName": "n1",\n  "vni": 42,\n  "offload": true,\n  "serviceCidr": ["10.96.0.0/12"]\n}\n');
    expect(settings(l)).toEqual({ "node-name": "n1", vni: "42", offload: "true", "service-cidr": "10.96.0.0/12" });
    expect(l.settings.get("vni")?.line).toBe(3);
  });

  it("an empty YAML file sets nothing", () => {
    expect(layer("v.yaml", "").settings.size).toBe(0);
    expect(layer("v.yaml", "# only a comment\n").settings.size).toBe(0);
  });

  it("every flag has a camelCase key", () => {
    expect(camelCase("cluster-cidr")).toBe("clusterCidr");
    expect(camelCase("vxlan-port")).toBe("vxlanPort");
    for (const spec of Object.values(daemonFlags)) {
      if (spec.name === "config") continue;
      expect(layer("v.yaml", `${camelCase(spec.name)}: x`).settings.get(spec.name)?.text).toBe("x");
    }
  });
});

describe("config file errors name the file, the line and the key", () => {
  it("an unknown key, with near matches", () => {
    expect(error("/etc/v.yaml", "vni: 1\nclusterCIDR: 10.0.0.0/8\n")).toBe(
      '/etc/v.yaml:2: unknown setting "clusterCIDR"; did you mean cluster-cidr? (settings are the flag names of `vxmesh daemon --help`, or their camelCase)');
    expect(error("/etc/v.yaml", "vxlan_port: 8472")).toContain('unknown setting "vxlan_port"; did you mean vxlan-port?');
    expect(error("/etc/v.yaml", "colour: blue")).toBe(
      '/etc/v.yaml:1: unknown setting "colour" (settings are the flag names of `vxmesh daemon --help`, or their camelCase)');
    expect(error("/etc/v.json", '{\n"vni": 1,\n"bogus": 2}')).toContain('/etc/v.json:3: unknown setting "bogus"');
    expect(nearMatches("gossip-prot", ["gossip-port", "vxlan-port", "tap"])).toEqual(["gossip-port"]);
  });

  it("config cannot name another config", () => {
    expect(error("v.yaml", "config: other.yaml")).toBe('v.yaml:1: "config" cannot be set inside a config file');
  });

  it("a setting given twice", () => {
    expect(error("v.yaml", "cluster-cidr: 10.244.0.0/16\nclusterCidr: 10.245.0.0/16")).toBe("v.yaml:2: cluster-cidr is set twice (also as cluster-cidr)");
    expect(error("v.yaml", "vni: 1\nvni: 2")).toBe("v.yaml:2:1: not valid YAML: Map keys must be unique");
    expect(error("v.json", '{"vni": 1, "vni": 2}')).toBe("v.json:1:12: a setting appears twice");
  });

  it("values of the wrong shape", () => {
    expect(error("v.yaml", "tap:")).toBe("v.yaml:1: tap has no value (name of the TAP device the daemon creates)");
    expect(error("v.yaml", "vni: [1, 2]")).toBe("v.yaml:1: vni is a list: expected a single value (VXLAN network identifier, 0-16777215)");
    expect(error("v.yaml", "vni: {a: 1}")).toContain("v.yaml:1: vni is a mapping: expected a value");
    expect(error("v.yaml", "join: [[1]]")).toContain("v.yaml:1: join must be a list of plain values");
    expect(error("v.yaml", "vni: .inf")).toContain("v.yaml:1: vni is Infinity: expected a finite number");
  });

  it("a file that is not a mapping", () => {
    expect(error("v.yaml", "- vni: 1")).toBe('v.yaml: expected a mapping of setting: value (such as "vni: 1"), not a list');
    expect(error("v.json", '"vni"')).toContain("not string");
    expect(error("v.json", "null")).toContain("not null");
  });

  it("malformed YAML, with line and column", () => {
    expect(error("v.yaml", "vni: 1\njoin: [192.0.2.1\ntap: x\n")).toMatch(/^v\.yaml:3:1: not valid YAML: Flow sequence in block collection must be sufficiently indented and end with a \]$/);
    expect(error("v.yaml", "vni: 1\n\ttap: x\n")).toBe("v.yaml:2:1: not valid YAML: Tabs are not allowed as indentation");
    expect(error("v.yaml", "vni: 1\ntap: a: b\n")).toBe("v.yaml:2:6: not valid YAML: Nested mappings are not allowed in compact mappings");
  });

  it("malformed JSON, with line and column", () => {
    expect(error("v.json", '{\n  "vni": 1,\n}')).toBe("v.json:3:1: not valid JSON: Expected double-quoted property name in JSON at position 14");
    expect(error("v.json", '{\n  "vni" 1\n}')).toMatch(/^v\.json:2:9: not valid JSON: /);
    expect(error("v.json", "")).toMatch(/^v\.json: not valid JSON: Unexpected end of JSON input$/);
  });
});

describe("readConfigFile", () => {
  const dir = mkdtempSync(join(tmpdir(), "vxmesh-config-file-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("reads a file and says when it cannot", () => {
    const f = join(dir, "v.yaml");
    writeFileSync(f, "vni: 3\n");
    const r = readConfigFile(f, daemonFlags);
    expect(r.ok && r.value.settings.get("vni")?.text).toBe("3");
    expect(readConfigFile(join(dir, "missing.yaml"), daemonFlags)).toEqual({ ok: false, error: `--config ${join(dir, "missing.yaml")}: cannot read it (ENOENT)` });
    expect(readConfigFile(dir, daemonFlags, "VXMESH_CONFIG")).toEqual({ ok: false, error: `VXMESH_CONFIG ${dir}: cannot read it (EISDIR)` });
  });
});
