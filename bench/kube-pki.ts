// Test tooling only: a throw-away PKI for the Kubernetes API test double (bench/kube-api-double.ts)
// made with the openssl CLI: a CA, a server certificate signed by it whose SANs name every address
// the double listens on, and one client certificate per user (CN = user, O = system:nodes), the
// way kubeadm's "system:node:<name>" credentials look. EC P-256 keys: a full set takes tens of ms.
//
// Go (kubectl) ignores the CN of a server certificate and checks only the SANs; Node's TLS server
// checks a client certificate's purpose, hence extendedKeyUsage clientAuth on the client ones.

import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { isIP } from "node:net";
import { join } from "node:path";

export interface TestPkiClient {
  readonly certFile: string;
  readonly keyFile: string;
  readonly certPem: string;
  readonly keyPem: string;
}

export interface TestPki {
  readonly caFile: string;
  readonly caPem: string;
  readonly serverCertFile: string;
  readonly serverKeyFile: string;
  readonly serverCertPem: string;
  readonly serverKeyPem: string;
  readonly clients: Readonly<Record<string, TestPkiClient>>;
}

export interface TestPkiOptions {
  /** IP SANs of the server certificate (e.g. "127.0.0.1", "192.0.2.2"). */
  ips: readonly string[];
  /** Extra DNS SANs; "localhost" and the in-cluster service names are always there. */
  dnsNames?: readonly string[];
  /** One client certificate per name (its CN). */
  clientUsers?: readonly string[];
  /** O of the client certificates; default "system:nodes", "" for none. */
  clientOrganization?: string;
  /** Validity; default 2 days (the PKI lives as long as one test run). */
  days?: number;
}

const BASE_DNS = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"];

// One config file for all three kinds: `openssl req -x509 -CA …` (OpenSSL ≥ 3.0) signs in one
// step, taking the extensions from the section named by -extensions.
function opensslConfig(sans: string): string {
  return [
    "[req]",
    "distinguished_name = dn",
    "prompt = no",
    "[dn]",
    "CN = unused",
    "[ca_ext]",
    "basicConstraints = critical,CA:TRUE",
    "keyUsage = critical,keyCertSign,cRLSign,digitalSignature",
    "subjectKeyIdentifier = hash",
    "[server_ext]",
    "basicConstraints = critical,CA:FALSE",
    "keyUsage = critical,digitalSignature,keyEncipherment",
    "extendedKeyUsage = serverAuth",
    "authorityKeyIdentifier = keyid",
    `subjectAltName = ${sans}`,
    "[client_ext]",
    "basicConstraints = critical,CA:FALSE",
    "keyUsage = critical,digitalSignature,keyEncipherment",
    "extendedKeyUsage = clientAuth",
    "authorityKeyIdentifier = keyid",
    "",
  ].join("\n");
}

/** A subject for -subj: "/" and "=" would split it, so names with them are refused. */
function subject(cn: string, o?: string): string {
  for (const part of [cn, o ?? ""]) {
    if (/[/=\\\n]/.test(part)) throw new Error(`certificate name "${part}" is not valid: "/", "=", "\\" and newlines are not allowed`);
  }
  return o === undefined || o === "" ? `/CN=${cn}` : `/O=${o}/CN=${cn}`;
}

/** Creates the PKI in `dir` (made if missing), synchronously. */
export function makeTestPki(dir: string, o: TestPkiOptions): TestPki {
  mkdirSync(dir, { recursive: true });
  for (const ip of o.ips) if (isIP(ip) === 0) throw new Error(`"${ip}" is not an IP address`);
  const dns = [...new Set([...BASE_DNS, ...(o.dnsNames ?? [])])];
  const sans = [...o.ips.map((ip) => `IP:${ip}`), ...dns.map((d) => `DNS:${d}`)].join(",");
  const cfg = join(dir, "openssl.cnf");
  writeFileSync(cfg, opensslConfig(sans));
  const days = String(o.days ?? 2);
  const keyArgs = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-noenc"];
  const openssl = (args: readonly string[]): void => {
    execFileSync("openssl", [...args], { stdio: ["ignore", "ignore", "pipe"] });
  };

  const caFile = join(dir, "ca.crt");
  const caKey = join(dir, "ca.key");
  openssl(["req", "-x509", "-config", cfg, "-extensions", "ca_ext", ...keyArgs, "-keyout", caKey, "-out", caFile, "-days", days, "-subj", subject("vxmesh-test-ca")]);

  // `req -x509 -CA` signs a fresh key with the CA in one call (no CSR file, no serial file).
  const issue = (name: string, ext: string, subj: string): { certFile: string; keyFile: string } => {
    const certFile = join(dir, `${name}.crt`);
    const keyFile = join(dir, `${name}.key`);
    openssl(["req", "-x509", "-config", cfg, "-extensions", ext, ...keyArgs, "-keyout", keyFile, "-out", certFile,
      "-CA", caFile, "-CAkey", caKey, "-days", days, "-subj", subj]);
    return { certFile, keyFile };
  };

  const server = issue("server", "server_ext", subject("kube-apiserver"));
  const clients: Record<string, TestPkiClient> = {};
  const org = o.clientOrganization ?? "system:nodes";
  for (const [i, user] of (o.clientUsers ?? []).entries()) {
    const c = issue(`client${i + 1}`, "client_ext", subject(user, org));
    clients[user] = { ...c, certPem: readFileSync(c.certFile, "utf8"), keyPem: readFileSync(c.keyFile, "utf8") };
  }
  return {
    caFile,
    caPem: readFileSync(caFile, "utf8"),
    serverCertFile: server.certFile,
    serverKeyFile: server.keyFile,
    serverCertPem: readFileSync(server.certFile, "utf8"),
    serverKeyPem: readFileSync(server.keyFile, "utf8"),
    clients,
  };
}
