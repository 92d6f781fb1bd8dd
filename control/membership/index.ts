// The membership core: SWIM + Lifeguard as a pure state machine, its wire codec, and the
// deterministic simulator that drives it.

export * from "./types";
export * from "./config";
export { Membership, type MembershipStats, type SelfInfo } from "./membership";
export { seededRng, randomInt, shuffle } from "./rng";
export { Suspicion, remainingSuspicionTime } from "./suspicion";
export { BroadcastQueue } from "./broadcast-queue";
export * as wire from "./wire";
