// The daemon's directories when none is given: every command that talks to a daemon or writes
// for it (daemon, status, trace, install-cni) defaults to the same two.

/** The control socket, the CNI hand-off (subnet.env, network.json). */
export const DEFAULT_RUN_DIR = "/run/vxmesh";
/** What survives restarts: the subnet lease, pod address reservations, the queued CNI DELs. */
export const DEFAULT_STATE_DIR = "/var/lib/vxmesh";
