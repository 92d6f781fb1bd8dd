// The Nodes as last listed and watched: a list replaces them all, each watch event changes one,
// and the resourceVersion to continue from moves with both (bookmarks included). Pure; it tells
// the caller whether a change could alter the peers, so kubelet's status updates (every Node,
// every few minutes) cost a map write, not a new peer selection.

import { formatIpv4, formatMac, formatSubnet } from "../../encap/types";
import { readNode, resourceVersionOf, type NodeView } from "./node-view";

export type CacheChange =
  /** Something a peer selection reads changed (a pod CIDR, our annotations, a Node come or gone). */
  | "peers"
  /** Only the named Node changed in ways peers do not see (its status, other annotations). */
  | "other"
  | "none";

export class NodeCache {
  private readonly byName = new Map<string, { view: NodeView; key: string }>();
  /** Where a watch continues from. */
  resourceVersion = "";
  /** Objects that could not be read (no name), since the start. */
  unreadable = 0;

  get size(): number {
    return this.byName.size;
  }

  views(): IterableIterator<NodeView> {
    return mapValues(this.byName.values());
  }

  get(name: string): NodeView | undefined {
    return this.byName.get(name)?.view;
  }

  /** A complete list: every Node is replaced. */
  replace(items: readonly unknown[], resourceVersion: string): void {
    this.byName.clear();
    for (const item of items) this.put(item);
    this.resourceVersion = resourceVersion;
  }

  /** One watch event (ERROR is the caller's); what it changed. */
  apply(type: "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK", object: unknown): CacheChange {
    const rv = resourceVersionOf(object);
    if (rv !== undefined) this.resourceVersion = rv;
    if (type === "BOOKMARK") return "none";
    if (type === "DELETED") {
      const view = readNode(object);
      if (!view.ok) {
        this.unreadable++;
        return "none";
      }
      return this.byName.delete(view.value.name) ? "peers" : "none";
    }
    return this.put(object);
  }

  /**
   * A Node as a write returned it (our own patch): newer than the watch has shown, but the
   * watch's position stays, so no event of another Node before it is skipped on a resume.
   */
  putWritten(object: unknown): CacheChange {
    return this.put(object);
  }

  private put(object: unknown): CacheChange {
    const view = readNode(object);
    if (!view.ok) {
      this.unreadable++;
      return "none";
    }
    const key = peerKey(view.value);
    const before = this.byName.get(view.value.name);
    this.byName.set(view.value.name, { view: view.value, key });
    return before === undefined || before.key !== key ? "peers" : "other";
  }
}

/** What a peer selection reads of a Node, as one string to compare. */
function peerKey(v: NodeView): string {
  const cidr = v.podCidr === undefined ? "-" : v.podCidr.ok ? formatSubnet(v.podCidr.value) : `!${v.podCidr.error}`;
  const e = v.endpoint;
  const ep = e === undefined ? "-" : e.ok ? `${formatIpv4(e.value.underlayIp)} ${formatMac(e.value.vtepMac)} ${e.value.vni} ${e.value.vxlanPort}` : `!${e.error}`;
  return `${cidr}|${ep}`;
}

function* mapValues(it: IterableIterator<{ view: NodeView }>): IterableIterator<NodeView> {
  for (const e of it) yield e.view;
}
